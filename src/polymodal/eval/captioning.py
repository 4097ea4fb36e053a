"""Caption metrics exactly as the COCO caption evaluation computes them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr-D come from `pycocoevalcap` (the COCO caption evaluation
code), after the same tokenisation COCO uses: Stanford's PTBTokenizer, lower-cased, with
punctuation tokens removed. pycocoevalcap's `Cider` class is CIDEr-D (Vedantam et al. 2015:
clipped counts, Gaussian length penalty, x10) -- the number papers report as "CIDEr"; its IDF
comes from the references of the evaluated set, so scores depend on the set, as in COCO.
SPICE runs only when its Stanford CoreNLP jars are already installed; it is never downloaded.

Chinese captions (`lang="zh"`) are scored at the character level -- each CJK character is a
token, no PTB tokenizer -- and their keys say so (`bleu_4_char`, `cider_d_char`, ...). METEOR
and SPICE are English-only and are not computed for Chinese.

Scale: pycocoevalcap's, i.e. BLEU/METEOR/ROUGE-L/SPICE in [0, 1], CIDEr-D in [0, 10].

Two subprocesses need Java: the PTB tokenizer (one short run per call, ~0.2 s) and METEOR
(a long-lived process that loads a paraphrase table, ~10 s to start). `CaptionMetrics` keeps the
METEOR process across calls, which matters for validation during training; close it with
`close()` or a `with` block (it is also closed when the object is collected).
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from polymodal.errors import ConfigError, DataError, PolymodalError
from polymodal.eval._common import Metric, align, as_reference_list, words_and_cjk_chars
from polymodal.registry import METRICS

logger = logging.getLogger(__name__)

LANGS = ("en", "zh")


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise PolymodalError(
            "caption metrics need Java: COCO's PTB tokenizer and METEOR are Java programs, but "
            "`java` is not on PATH. Install a Java runtime (e.g. `apt-get install default-jre-headless`).")
    return java


# Everything Java (or Python) could take for a line break; a caption must stay on one line.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenise captions as COCO's evaluation does (pycocoevalcap's PTBTokenizer).

    Same jar, flags and punctuation filter as `pycocoevalcap.tokenizer.PTBTokenizer`, but the
    sentences go through stdin rather than a temporary file written inside the installed package
    (which fails on a read-only install), and the line count is checked so that captions can
    never shift against their ids. Note COCO's quirk, kept on purpose: brackets become `-lrb-`
    and `-rrb-` and stay, because the filter lists them upper-case after lower-casing.

    Args:
        sentences: raw captions.
    Returns:
        one space-separated, lower-cased token string per sentence.
    """
    if not sentences:
        return []
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    cmd = [_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    text = "".join(_LINE_BREAKS.sub(" ", s) + "\n" for s in sentences)
    try:
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise PolymodalError(f"the PTB tokenizer did not finish in 600 s on {len(sentences)} captions") from None
    lines = proc.stdout.decode("utf-8").split("\n")
    # One output line per input line, plus the empty piece after the final newline.
    if proc.returncode != 0 or len(lines) != len(sentences) + 1 or lines[-1]:
        err = proc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise PolymodalError(f"the PTB tokenizer (Java) failed (exit {proc.returncode}, {len(lines) - 1} lines "
                             f"for {len(sentences)} captions): {err or 'no message'}")
    drop = set(ptb.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in drop) for line in lines[:-1]]


def char_tokenize(sentence: str) -> str:
    """Character-level tokens for Chinese: "一个红色的圆。" -> "一 个 红 色 的 圆" (see words_and_cjk_chars)."""
    return " ".join(words_and_cjk_chars(sentence))


class Meteor:
    """METEOR 1.5 as pycocoevalcap runs it (same jar, flags and protocol), made robust.

    pycocoevalcap's `Meteor` never reads the process's stderr (a full pipe blocks Java), hangs or
    crashes obscurely when the process has died, and closes only in `__del__`. This one sends
    stderr to a temporary file (quoted in errors), fails with a clear message when Java exits,
    and is closed by `close()`, a `with` block, garbage collection or interpreter exit.
    """

    def __init__(self):
        from pycocoevalcap.meteor import meteor as m

        jar_dir = Path(m.__file__).parent
        self._stderr = tempfile.TemporaryFile()
        # pycocoevalcap's command, plus the serial garbage collector: same scores, half the
        # memory (~0.6 GB instead of ~1.2 GB resident) and less contention on a small CPU.
        self._proc = subprocess.Popen(
            [_java(), "-XX:+UseSerialGC", "-jar", "-Xmx2G", m.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop_process, self._proc, self._stderr)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
        """Corpus METEOR (the aggregate COCO reports) and per-caption scores for tokenised captions."""
        if not self.alive:
            raise PolymodalError("METEOR was closed; create a new scorer")
        with self._lock:
            stats, pairs = [], list(zip(hypotheses, references))
            # requests in chunks, then their answers: one round trip a chunk, not a caption (2x
            # faster); a chunk's requests and answers stay well inside the pipes' 64 KiB buffers
            for i in range(0, len(pairs), _METEOR_CHUNK):
                chunk = pairs[i:i + _METEOR_CHUNK]
                for hyp, refs in chunk:
                    # Fields are separated by "|||", one request per line: neither may occur inside.
                    fields = ["SCORE", *(_meteor_field(r) for r in refs), _meteor_field(hyp)]
                    self._send(" ||| ".join(fields))
                stats += [self._receive() for _ in chunk]
            self._send(" ||| ".join(["EVAL", *stats]))
            per_caption = [float(self._receive()) for _ in stats]
            return float(self._receive()), per_caption

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line.encode("utf-8") + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died()

    def _receive(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            self._died()
        return line.decode("utf-8").strip()

    def _died(self):
        self._proc.poll()
        self._stderr.seek(0)
        err = self._stderr.read().decode("utf-8", "replace").strip()[-500:]
        self.close()
        raise PolymodalError(f"METEOR (Java) stopped unexpectedly (exit {self._proc.returncode}): "
                             f"{err or 'no message'} (it reserves a 2 GB Java heap: is memory short?)")

    def close(self) -> None:
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_METEOR_CHUNK = 32


def _meteor_field(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text).replace("|||", "").replace("  ", " ")


def _stop_process(proc: subprocess.Popen, stderr) -> None:
    # Closing stdin lets METEOR exit on its own; kill it if it does not within a few seconds.
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()
    stderr.close()


_SPICE_NOTED = False


def spice_missing() -> list[str]:
    """The SPICE files that are not installed (empty when SPICE can run)."""
    from pycocoevalcap.spice import get_stanford_models as g

    lib = Path(g.__file__).parent / g.SPICELIB
    return [str(p) for p in (lib / f"{g.JAR}.jar", lib / f"{g.JAR}-models.jar") if not p.exists()]


@METRICS.register("captioning")
class CaptionMetrics(Metric):
    """COCO caption metrics (see the module docstring).

    Args:
        lang: "en" (PTB tokens; BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) or "zh" (characters;
            `*_char` keys, no METEOR/SPICE).
        meteor: compute METEOR (English; starts a ~10 s Java process, kept until `close()`).
        spice: True requires SPICE, False skips it, None (default) runs it only when its
            CoreNLP jars are installed and logs a note otherwise.
    """

    def __init__(self, lang: str = "en", meteor: bool = True, spice: bool | None = None):
        lang = lang.lower().replace("_", "-")
        lang = "zh" if lang.startswith("zh") else lang
        if lang not in LANGS:
            raise ConfigError(f"captioning.lang: {lang!r} is not supported; use one of {', '.join(LANGS)}")
        self.lang = lang
        self.use_meteor = meteor and lang == "en"
        self.use_spice = spice if lang == "en" else False
        self.main = "cider_d_char" if lang == "zh" else "cider_d"
        self._meteor: Meteor | None = None

    def __call__(self, predictions: Mapping[Hashable, Any],
                 references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
        """Score captions.

        Args:
            predictions: id -> caption (a string, or a one-element list as in COCO results).
            references: id -> list of reference captions (or one string).
        Returns:
            {"bleu_1".."bleu_4", "meteor", "rouge_l", "cider_d", ["spice"], "n"} for English,
            {"bleu_1_char".."bleu_4_char", "rouge_l_char", "cider_d_char", "n"} for Chinese.
        """
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        ids = align(predictions, references, "captioning")
        hyps = [_one_caption(predictions[i], i) for i in ids]
        refs = [as_reference_list(references[i], f"captioning: references[{i!r}]") for i in ids]

        # Tokenise predictions and references in one Java run (PTB works line by line, so this
        # equals COCO's two separate runs), then regroup per id.
        flat = hyps + [r for rs in refs for r in rs]
        tokens = [char_tokenize(s) for s in flat] if self.lang == "zh" else ptb_tokenize(flat)
        # pycocoevalcap wants {key: [caption, ...]}; integer keys also keep SPICE's JSON happy.
        res = {k: [tokens[k]] for k in range(len(ids))}
        gts, pos = {}, len(ids)
        for k, rs in enumerate(refs):
            gts[k] = tokens[pos:pos + len(rs)]
            pos += len(rs)

        suffix = "_char" if self.lang == "zh" else ""
        out: dict[str, float] = {}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, b in enumerate(bleu, start=1):
            out[f"bleu_{n}{suffix}"] = float(b)
        if self.use_meteor:
            if self._meteor is None or not self._meteor.alive:  # first call, or Java died last time
                self._meteor = Meteor()
            out["meteor"] = self._meteor.score([res[k][0] for k in res], [gts[k] for k in res])[0]
        out[f"rouge_l{suffix}"] = float(Rouge().compute_score(gts, res)[0])
        out[f"cider_d{suffix}"] = float(Cider().compute_score(gts, res)[0])
        spice = self._spice(gts, res)
        if spice is not None:
            out["spice"] = spice
        out["n"] = float(len(ids))
        return out

    def _spice(self, gts: dict, res: dict) -> float | None:
        if self.use_spice is False:
            return None
        missing = spice_missing()
        if missing:
            msg = ("SPICE needs Stanford CoreNLP 3.6.0 jars that are not installed: "
                   + ", ".join(missing) + " (polymodal never downloads them; copy them there to enable SPICE)")
            if self.use_spice:
                raise PolymodalError(msg)
            global _SPICE_NOTED
            if not _SPICE_NOTED:  # once per process, not once per validation round
                logger.info("SPICE skipped: %s", msg)
                _SPICE_NOTED = True
            return None
        from pycocoevalcap.spice.spice import Spice

        try:
            return float(Spice().compute_score(gts, res)[0])
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            if self.use_spice:
                raise PolymodalError(f"SPICE failed: {e}") from e
            logger.warning("SPICE skipped: it failed to run (%s)", e)
            return None

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None


def _one_caption(value: Any, key: Hashable) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise DataError(f"captioning: prediction for {key!r} must be one caption string, got {value!r}")
    return value


def caption_metrics(predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Sequence[str]],
                    lang: str = "en", meteor: bool = True, spice: bool | None = None) -> dict[str, float]:
    """One-off caption scoring (starts and stops METEOR); see `CaptionMetrics` for the arguments."""
    with CaptionMetrics(lang=lang, meteor=meteor, spice=spice) as metric:
        return metric(predictions=predictions, references=references)
