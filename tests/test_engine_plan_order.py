"""A BatchPlan is a mapping and a set: equal plans have equal effects, whatever their order."""
from tests.conftest import make_engine, spec

from llmsched_env import BatchPlan


def _state(eng):
    return ([r.rid for r in eng.running.values()], [r.rid for r in eng.iter_waiting()],
            eng.used_blocks, eng.now_s)


def test_admission_and_preemption_order_do_not_depend_on_plan_order():
    specs = [spec(i, prompt=8, output=6) for i in (1, 9, 17, 3)]  # 1, 9, 17 collide in a small set
    a = make_engine(specs, num_kv_blocks=64)
    b = make_engine(specs, num_kv_blocks=64)
    a.step(BatchPlan({1: 8, 9: 8, 17: 8, 3: 8}))
    b.step(BatchPlan({3: 8, 17: 8, 9: 8, 1: 8}))
    assert _state(a) == _state(b)
    assert [r.rid for r in a.running.values()] == [1, 3, 9, 17]  # waiting-queue order (arrival, id)
    pa, pb = set(), set()
    for rid in (1, 9, 17):
        pa.add(rid)
    for rid in (17, 9, 1):
        pb.add(rid)
    a.step(BatchPlan({3: 1}, pa))
    b.step(BatchPlan({3: 1}, pb))
    assert _state(a) == _state(b)
    # Victims are re-queued at the head in admission order, as successive newest-first victims are.
    assert [r.rid for r in a.iter_waiting()] == [1, 9, 17]
