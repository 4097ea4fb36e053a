"""Translation metrics: corpus BLEU and chrF with sacrebleu, the field's reference implementation.

The BLEU tokenizer follows the target language: "zh" (sacrebleu's Chinese tokenizer, which splits
CJK characters) for Chinese, "13a" (the WMT default) otherwise. chrF is character n-gram F-score
(beta 2, sacrebleu defaults), which needs no tokenizer. Scores are sacrebleu's, in [0, 100], so they
compare with published sacrebleu numbers; the full signature is logged.
"""
from __future__ import annotations

import logging
from typing import Any, Hashable, Mapping, Sequence

from polymodal.errors import DataError
from polymodal.eval._common import Metric, align, as_reference_list
from polymodal.registry import METRICS

logger = logging.getLogger(__name__)


def bleu_tokenizer(target_lang: str) -> str:
    """sacrebleu's tokenizer for a target language: "zh" for Chinese, "13a" otherwise."""
    return "zh" if target_lang.lower().replace("_", "-").startswith("zh") else "13a"


def translation_metrics(predictions: Mapping[Hashable, str] | Sequence[str],
                        references: Mapping[Hashable, Any] | Sequence[Any],
                        target_lang: str = "en") -> dict[str, float]:
    """Corpus BLEU and chrF of translations.

    Args:
        predictions: id -> translation, or a list of translations.
        references: id -> reference(s), or a list aligned with the predictions; each item is one
            reference string or a list of them (their number may vary between sentences).
        target_lang: language code of the translations ("en", "de", "zh", ...).
    Returns:
        {"bleu", "chrf", "n"}.
    """
    from sacrebleu.metrics import BLEU, CHRF

    if isinstance(predictions, Mapping):
        ids = align(predictions, references, "translation")
        hyps = [predictions[i] for i in ids]
        refs = [as_reference_list(references[i], f"translation: references[{i!r}]") for i in ids]
    else:
        hyps = list(predictions)
        refs = [as_reference_list(r, f"translation: references[{k}]") for k, r in enumerate(references)]
        if len(hyps) != len(refs):
            raise DataError(f"translation: {len(hyps)} predictions for {len(refs)} references")
        if not hyps:
            raise DataError("translation: no predictions to score")
    bad = [h for h in hyps if not isinstance(h, str)]
    if bad:
        raise DataError(f"translation: predictions must be strings, got e.g. {bad[0]!r}")
    # sacrebleu takes reference *streams*: stream j holds every sentence's j-th reference, None
    # where a sentence has fewer.
    width = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(width)]
    bleu = BLEU(tokenize=bleu_tokenizer(target_lang))
    chrf = CHRF()
    out = {"bleu": float(bleu.corpus_score(hyps, streams).score),
           "chrf": float(chrf.corpus_score(hyps, streams).score),
           "n": float(len(hyps))}
    logger.info("translation metrics: BLEU %s; chrF %s", bleu.get_signature(), chrf.get_signature())
    return out


@METRICS.register("translation")
class TranslationMetrics(Metric):
    """sacrebleu BLEU and chrF (see `translation_metrics`).

    Args:
        target_lang: language of the translations; "zh..." selects sacrebleu's Chinese tokenizer.
    """

    main = "bleu"

    def __init__(self, target_lang: str = "en"):
        self.target_lang = target_lang

    def __call__(self, predictions: Mapping[Hashable, str] | Sequence[str],
                 references: Mapping[Hashable, Any] | Sequence[Any]) -> dict[str, float]:
        return translation_metrics(predictions, references, target_lang=self.target_lang)
