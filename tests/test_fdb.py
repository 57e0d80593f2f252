"""The FDB hash table against a dict model: random learn/delete/flush churn
must keep every live entry findable (backward-shift deletion, no tombstones)."""
import random

import pytest

from conftest import mac
from fastpath import Fdb


@pytest.mark.parametrize("seed", range(5))
def test_churn_matches_model(seed):
    rnd = random.Random(seed)
    fdb = Fdb(capacity=512, aging=0)
    model = {}
    for _ in range(5000):
        m, dom = mac(rnd.randrange(700)), rnd.randrange(3)
        op = rnd.random()
        if op < 0.55:
            if (m, dom) in model or len(model) < 512:
                port = rnd.randrange(8)
                fdb.add_static(m, port, dom)
                model[(m, dom)] = port
        elif op < 0.95:
            assert fdb.delete(m, dom) == ((m, dom) in model)
            model.pop((m, dom), None)
        else:
            port = rnd.randrange(8)
            n = fdb.flush(port=port, include_static=True)
            gone = [k for k, v in model.items() if v == port]
            assert n == len(gone)
            for k in gone:
                del model[k]
        assert len(fdb) == len(model)
    for (m, dom), port in model.items():
        assert fdb.lookup(m, dom) == port
    assert {(d["mac"], d["domain"]): d["port"] for d in fdb.dump()} == model


def test_full_table_refuses_static_and_keeps_old_state():
    fdb = Fdb(capacity=4)
    for i in range(4):
        fdb.add_static(mac(i), i)
    with pytest.raises(OverflowError):
        fdb.add_static(mac(10), 1)
    assert len(fdb) == 4 and fdb.lookup(mac(10)) is None
    fdb.add_static(mac(2), 7)                 # replacing an existing key still works
    assert fdb.lookup(mac(2)) == 7


def test_bad_parameters():
    with pytest.raises(ValueError, match="capacity"):
        Fdb(capacity=0)
    with pytest.raises(ValueError, match="aging"):
        Fdb(aging=-1)
    with pytest.raises(ValueError, match="MAC"):
        Fdb().lookup(b"\x00\x01")
