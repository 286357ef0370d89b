"""The shared argument checks and the deferred one-time warnings."""

import math
import warnings

import pytest
import torch

from torch_arcad import _validation
from torch_arcad._validation import DeferredWarnings, check_floating, check_int, check_number


def test_check_int_and_check_number():
    check_int("n", 3, 1)
    check_int("n", 0, 0)
    for bad, error in ((2.5, TypeError), (True, TypeError), ("3", TypeError), (0, ValueError)):
        with pytest.raises(error, match="n must be"):
            check_int("n", bad, 1)
    check_number("x", 0, 0.0)
    check_number("x", 2.5, 1.0)
    for bad, error in ((-0.1, ValueError), (math.inf, ValueError), (math.nan, ValueError), (False, TypeError),
                       ("1", TypeError), (0.5, ValueError)):
        with pytest.raises(error, match="x must be"):
            check_number("x", bad, 0.0 if bad != 0.5 else 1.0)
    check_floating("f", torch.zeros(1, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="torch.int32"):
        check_floating("f", torch.zeros(1, dtype=torch.int32))


def test_deferred_warnings_on_cpu_are_immediate_and_once():
    deferred = DeferredWarnings((lambda n: f"first {n}", lambda n: f"second {n}"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deferred.update(torch.tensor([0, 0]))
        assert not caught
        deferred.update(torch.tensor([2, 0]))
        deferred.update(torch.tensor([1, 0]))
        deferred.update(torch.tensor([0, 3]))
        deferred.update(torch.tensor([5, 5]))
    assert [str(w.message) for w in caught] == ["first 2", "second 3"]
    assert all(deferred.issued)
    assert all(w.filename == __file__ for w in caught)


class FakeEvent:
    """Stands in for an accelerator event: completes when the test says so."""

    done = False

    def __init__(self, device=None):
        self.recorded = False

    def record(self):
        self.recorded = True

    def query(self):
        return FakeEvent.done


def test_deferred_warnings_on_an_accelerator_never_wait(monkeypatch):
    # The accelerator branch: a copy of the running total goes to the host behind an event; the warning is issued
    # by a later update once the event has completed, and the counts of the steps in between are not lost.
    monkeypatch.setattr(DeferredWarnings, "_readable_now", staticmethod(lambda totals: False))
    monkeypatch.setattr(_validation.torch, "Event", FakeEvent)
    FakeEvent.done = False
    deferred = DeferredWarnings((lambda n: f"bad {n}",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deferred.update(torch.tensor([1]))  # copy started, nothing read
        deferred.update(torch.tensor([2]))  # copy still in flight: only the total grows
        assert not caught
        FakeEvent.done = True
        deferred.update(torch.tensor([4]))  # the first copy (total 1) is read; a new copy of total 7 starts
    assert [str(w.message) for w in caught] == ["bad 1"]
    assert deferred._total.tolist() == [7]


def test_deferred_warnings_count_across_steps_before_the_copy_lands(monkeypatch):
    monkeypatch.setattr(DeferredWarnings, "_readable_now", staticmethod(lambda totals: False))
    monkeypatch.setattr(_validation.torch, "Event", FakeEvent)
    FakeEvent.done = False
    deferred = DeferredWarnings((lambda n: f"bad {n}",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deferred.update(torch.tensor([0]))  # copy of 0 in flight
        deferred.update(torch.tensor([3]))  # a bad step while the copy is in flight
        FakeEvent.done = True
        deferred.update(torch.tensor([0]))  # reads 0, starts a copy of the total 3
        assert not caught
        deferred.update(torch.tensor([0]))  # reads 3
    assert [str(w.message) for w in caught] == ["bad 3"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deferred_warnings_on_cuda_do_not_synchronise():
    deferred = DeferredWarnings((lambda n: f"bad {n}",))
    counts = torch.tensor([1], device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deferred.update(counts)
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            deferred.update(torch.zeros_like(counts))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [str(w.message) for w in caught] == ["bad 1"]
