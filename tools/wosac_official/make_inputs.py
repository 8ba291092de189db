"""Phase 1 of the golden run (project venv): write the WOSAC golden rollouts as .npz files.

    .venv/bin/python tools/wosac_official/make_inputs.py --out /tmp/wosac_inputs [--gpudrive 20]

For every golden scene (``tests/wosac_cases.golden_files``) and rollout set
(``tests/wosac_cases.ROLLOUT_SETS``) it writes ``<out>/<scene_id>__<set>.npz`` with float32
``x, y, z, heading`` ``(32, A, 80)`` and int64 ``object_ids`` ``(A,)`` (the simulated agents,
valid at step 10, in track order), plus ``<out>/manifest.json`` listing the cases, the settings
and a fingerprint of each rollout set. Phase 2 (``golden_official.py``, side venv) reads them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import wosac_cases as wc  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/wosac_inputs")
    ap.add_argument("--data-root", default=None, help="folder holding womd-sample/ and womd-gpudrive/ "
                    "(default: $BLM_GYM_DATA or ../shared/data)")
    ap.add_argument("--gpudrive", type=int, default=wc.GPUDRIVE_COUNT, help="how many womd-gpudrive scenes")
    args = ap.parse_args(argv)
    if args.data_root is None:
        args.data_root = os.environ.get("BLM_GYM_DATA") or str(REPO.parent / "shared" / "data")
    root, out = Path(args.data_root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    t0 = time.perf_counter()
    for rel in wc.golden_files(root, args.gpudrive):
        scenario = wc.load_scenario(root / rel)
        a = wc.scene_arrays(scenario)
        mask = wc.sim_agent_mask(a["valid"])
        evaluated = sorted({int(a["sdc_index"]), *map(int, a["tracks_to_predict"])})
        if not mask[evaluated].all():
            print(f"skip {rel}: an evaluated agent is not valid at step {wc.CURRENT_STEP}", flush=True)
            continue
        object_ids = np.array([int(i) for i in a["track_ids"][mask]], np.int64)
        case = {"file": rel, "scene_id": a["scene_id"], "num_tracks": int(len(mask)),
                "num_sim_agents": int(mask.sum()), "num_evaluated": len(evaluated), "sets": {}}
        for name in wc.ROLLOUT_SETS:
            x, y, z, h = wc.make_rollouts(a, name)
            assert x.shape == (wc.NUM_ROLLOUTS, int(mask.sum()), wc.NUM_SIM_STEPS), x.shape
            path = out / f"{a['scene_id']}__{name}.npz"
            np.savez_compressed(path, x=x, y=y, z=z, heading=h, object_ids=object_ids)
            case["sets"][name] = {"npz": path.name, "fingerprint": wc.rollout_fingerprint(x, y, z, h)}
        cases.append(case)
        print(f"{time.perf_counter() - t0:7.1f}s {rel} agents={case['num_sim_agents']} "
              f"evaluated={case['num_evaluated']}", flush=True)
    manifest = {
        "data_root": str(root),
        "settings": {
            "current_step": wc.CURRENT_STEP, "num_rollouts": wc.NUM_ROLLOUTS, "num_sim_steps": wc.NUM_SIM_STEPS,
            "num_log_steps": wc.NUM_LOG_STEPS, "dt": wc.DT, "rollout_sets": list(wc.ROLLOUT_SETS),
            "noise_sigma_xy_m": wc.NOISE_SIGMA_XY, "noise_sigma_heading_rad": wc.NOISE_SIGMA_HEADING,
            "noise_seed": wc.NOISE_SEED, "gpudrive_count": args.gpudrive,
            "selection": "all womd-sample/sd_*.pkl (sorted; 20 s scenes cut to their first 91 steps) + the first "
                         f"{args.gpudrive} womd-gpudrive/sd_*.pkl in sorted file order whose metadata has >= 1 "
                         "tracks_to_predict",
            "numpy": np.__version__,
        },
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {len(cases)} scenes x {len(wc.ROLLOUT_SETS)} sets to {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
