import pytest
import torch

from _helpers import processor_for, run_config  # noqa: E402
from _synthetic import collator, records  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain little from a second thread, and lose a lot when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_run():
    """(recipe, task, tmp dir, n_train, **config sections) -> (TrainResult, train records)."""
    from polymodal.train import train

    def go(recipe, task, out, n_train=256, ids_by_colour=False, val=None, **kw):
        recs = records(task, n_train, seed=0, ids_by_colour=ids_by_colour)
        val_recs = records(task, val, seed=1, ids_by_colour=ids_by_colour) if val else None
        res = train(run_config(recipe, task, out, **kw), train_records=recs, val_records=val_recs,
                    collate_fn=collator(processor_for(recipe)))
        return res

    return go
