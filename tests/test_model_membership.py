"""The model's live-connection counts and member lists are kept as connections come and go (issue 15:
a 10-node run spent most of its time recomputing them from masks). Whatever the run did -- ramps,
churn, refusals at the limits, several nodes -- they must equal the masks' answers at every slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model import Calibration, Workload
from model.sim import Simulation

CAL = Path(__file__).parent.parent / "notebooks/data/reference/calibration-optimized.json"


class Checked(Simulation):
    """Compares the kept state with the masks at the start of every slice."""

    checks = 0

    def slice(self, t0: float, t1: float) -> None:
        for n in range(self.n_nodes):
            here = self.live & (self.node_of == n)
            want = np.bincount(self.company[here], minlength=self.company.max() + 1)
            assert np.array_equal(self.local_members(n), want)
            for c in range(self.company.max() + 1):
                assert np.array_equal(self.members(n, c), np.flatnonzero(here & (self.company == c)))
            asked = np.array([2, 0, 2, 3, 1])  # several companies at once, repeats too, in the order asked
            conn, sizes = self.members_of(n, asked)
            assert np.array_equal(conn, np.concatenate([np.flatnonzero(here & (self.company == c)) for c in asked]))
            assert np.array_equal(sizes, want[asked])
        Checked.checks += 1
        super().slice(t0, t1)


@pytest.mark.parametrize("nodes", [1, 3])
@pytest.mark.parametrize("limits", [False, True])
def test_kept_counts_and_members_equal_the_masks_through_a_run(nodes, limits):
    cal = Calibration.model_validate_json(CAL.read_text())
    if limits:  # refusals: a connect that does not come up must change nothing
        cal.conn_limits, cal.max_connections, cal.max_per_company = True, 150, 60
    wl = Workload(
        steps=[{"connections": 200, "hold_s": 4}, {"connections": 500, "hold_s": 8}],
        events_per_second=400,
        mix={"echo": 0.8, "chat": 0.2},
        companies=4,
        connect_rate=400,
        churn_per_s=20,
        churn_away_s=0.5,
    )
    Checked.checks = 0
    cols = Checked(cal, wl, seed=5, nodes=nodes).run()
    assert Checked.checks > 30
    kinds = cols[1]
    from eventlog.schema import KIND_INDEX as K

    assert (kinds == K["disconnect"]).sum() > 50  # the churn ran
    assert ((kinds == K["connect_fail"]).sum() > 0) == limits
