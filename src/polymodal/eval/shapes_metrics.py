"""Ground-truth metrics that only a generated world can give: caption hallucination (CHAIR) with
attributes bound to objects, and object recall, checked against each image's exact scene record.

A mention is an object phrase of a caption with the attributes attached to it ("a small red
circle" -> shape circle, colour red, size small). It is hallucinated when no object of the scene
has every attribute the mention names — stricter than the generic CHAIR, which checks attributes
against the scene as a bag. Counts ("two circles") are scored apart as count accuracy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from polymodal.eval._common import Metric
from polymodal.registry import METRICS


@METRICS.register("shapes_chair")
class ShapesChair(Metric):
    """CHAIR-i / CHAIR-s / object recall / count accuracy of captions against shapes-world scenes."""

    main = "chair_i"
    higher_is_better = False

    def __call__(self, captions: Mapping[str, str], scenes: Mapping[str, dict],
                 lang: str | None = None) -> dict[str, float]:
        from polymodal.data.shapes import extract_concepts, mention_in_scene

        n_mentions = n_bad = n_caps_bad = 0
        n_objects = n_recalled = 0
        n_counts = n_counts_ok = 0
        for key, caption in captions.items():
            scene = scenes[key]
            mentions = [m for m in extract_concepts(caption, lang) if m.get("count") != 0]
            bad = [m for m in mentions if not mention_in_scene(m, scene)]
            n_mentions += len(mentions)
            n_bad += len(bad)
            n_caps_bad += bool(bad)
            for o in scene["objects"]:
                n_objects += 1
                n_recalled += any(m.get("shape") == o["shape"] and m.get("color") in (None, o["color"])
                                  for m in mentions)
            for m in mentions:
                if isinstance(m.get("count"), int) and m["count"] > 1:
                    desc = {k: m[k] for k in ("shape", "color", "size") if m.get(k)}
                    true = sum(all(o.get(k) == v for k, v in desc.items()) for o in scene["objects"])
                    n_counts += 1
                    n_counts_ok += true == m["count"]
        n = len(captions)
        return {"chair_i": n_bad / max(n_mentions, 1), "chair_s": n_caps_bad / max(n, 1),
                "object_recall": n_recalled / max(n_objects, 1),
                "count_accuracy": n_counts_ok / n_counts if n_counts else float("nan"),
                "n_mentions": float(n_mentions), "n": float(n)}
