"""The metrics of polymodal, registered by name in `METRICS` for `polymodal eval` and validation.

Importing this module registers them all. Build one from a config and call it:

    metric = METRICS.build({"type": "vqa"})
    metric(predictions={qid: "2"}, references={qid: ["two", ...]})   # -> {"accuracy": ..., "n": ...}

Every metric returns a flat dict of floats (counts such as "n" included) and names in `.main`
the key that model selection should watch (`.higher_is_better` says which way). Call `.close()`
or use a `with` block when done: the caption metric holds a Java process for METEOR.

| name           | call with                                                | keys                                               |
|----------------|----------------------------------------------------------|----------------------------------------------------|
| captioning     | predictions {id: caption}, references {id: [captions]}   | bleu_1..4, meteor, rouge_l, cider_d, [spice], n;   |
|                |                                                          | lang="zh": bleu_1_char..4, rouge_l_char, cider_d_char |
| vqa            | predictions {qid: answer}, references {qid: [answers]},  | accuracy, n, accuracy[answer_type=..],             |
|                | [question_types, answer_types {qid: type}]               | accuracy[question_type=..], n[...]                 |
| retrieval      | similarity (n_images, n_texts), text_to_image (n_texts,) | i2t_r1/5/10, t2i_r1/5/10, *_mean_rank,             |
|                |                                                          | *_median_rank, r_mean, n_images, n_texts           |
| classification | references, predictions and/or scores                    | accuracy, macro_f1, [auroc], n                     |
| translation    | predictions, references (one or several per sentence)    | bleu, chrf, n                                      |
| grounding      | predictions (n, 4) boxes, references (n, 4) boxes        | accuracy@0.5, mean_iou, n                          |
| detection      | predictions {id: [{box, score}]}, references {id: [boxes]}, | AP@0.5, AP@[.5:.95] (COCOeval), per phrase kind, |
|                | [kinds {id: phrase kind}]                                | fp_per_image@0.5[empty], n, n_empty                |
| chair          | captions, objects [, attributes] per caption             | chair_i, chair_s, chair_i_object,                  |
|                |                                                          | [chair_i_attribute], object_recall, n, n_mentions  |
| shapes_chair   | captions {id: caption}, scenes {id: scene}               | chair_i, chair_s, object_recall, count_accuracy, … |
| shapes_retrieval_ceiling | texts, text_to_image, scenes (shapes world)    | ceiling_i2t_r1/5/10, ceiling_t2i_r1/5/10,          |
|                |                                                          | ceiling_r_mean, n_unread_texts                     |

Scales follow each field's reference tool, so numbers compare with published ones: fractions in
[0, 1] (COCO caption metrics, VQA accuracy, recalls, accuracies, CHAIR), CIDEr-D in [0, 10],
sacrebleu's BLEU and chrF in [0, 100]; ranks are 1-based.
"""
from __future__ import annotations

from polymodal.eval._common import Metric
from polymodal.eval.captioning import CaptionMetrics, caption_metrics, ptb_tokenize
from polymodal.eval.classification import ClassificationMetrics, binary_auroc, classification_metrics
from polymodal.eval.detection import DetectionMetrics, detection_metrics
from polymodal.eval.grounding import GroundingMetrics, box_iou, grounding_metrics
from polymodal.eval.hallucination import ChairMetrics, ConceptLexicon, chair_metrics
from polymodal.eval.shapes_metrics import ShapesChair, ShapesRetrievalCeiling, caption_true, retrieval_ceiling
from polymodal.eval.retrieval import RetrievalMetrics, ideal_recalls, retrieval_metrics, retrieval_ranks
from polymodal.eval.translation import TranslationMetrics, translation_metrics
from polymodal.eval.vqa import VQAAccuracy, normalize_answer, vqa_accuracy, vqa_score
from polymodal.registry import METRICS

__all__ = [
    "METRICS", "Metric",
    "CaptionMetrics", "caption_metrics", "ptb_tokenize",
    "VQAAccuracy", "vqa_accuracy", "vqa_score", "normalize_answer",
    "RetrievalMetrics", "retrieval_metrics", "retrieval_ranks", "ideal_recalls",
    "ClassificationMetrics", "classification_metrics", "binary_auroc",
    "TranslationMetrics", "translation_metrics",
    "GroundingMetrics", "grounding_metrics", "box_iou", "DetectionMetrics", "detection_metrics",
    "ChairMetrics", "chair_metrics", "ConceptLexicon", "ShapesChair",
    "ShapesRetrievalCeiling", "retrieval_ceiling", "caption_true",
]
