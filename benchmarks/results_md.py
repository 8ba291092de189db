"""Write docs/results.md: the closed-loop results tables, each with the command that made it.

Every table is computed here by :func:`policy_table.evaluate` (nothing is typed in): per dataset,
the policies side by side with the log, our default metric suite. Run::

    python benchmarks/results_md.py                 # every table (tens of minutes on 2 cores)
    python benchmarks/results_md.py --tables nuscenes-val
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

from policy_table import entry_counts_line, evaluate, markdown

ROOT = Path(__file__).resolve().parents[1]
SAFE = "blm_gym/assets/blm_nuscenes_safe.pt"


@dataclass(frozen=True)
class Table:
    dataset: str  # policy_table.DATASETS key
    title: str
    samples: int
    membership: str = "log"
    policies: tuple[str, ...] = ("log", "constant_velocity", "idm", "blm_unguided", "blm", "blm_unguided@safe")

    @property
    def command(self) -> str:
        return (f"python benchmarks/policy_table.py --dataset {self.dataset} --policies {','.join(self.policies)} "
                f"--checkpoint safe={SAFE} --samples {self.samples} --membership {self.membership}")


TABLES = {
    "nuscenes-val": Table("nuscenes-val", "nuScenes-mini val (scene-0103, scene-0916), agents enter as logged", 8),
    "nuscenes-val-frozen": Table("nuscenes-val", "nuScenes-mini val, frozen agents", 8, "frozen"),
    "womd": Table("womd", "womd-sample (9 Waymo scenes), agents enter as logged", 4),
    "womd-frozen": Table("womd", "womd-sample, frozen agents", 4, "frozen"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated, of {list(TABLES)}")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = p.parse_args()
    sections = []
    for key in args.tables.split(","):
        t = TABLES[key]
        t0 = time.perf_counter()
        results = evaluate(t.dataset, list(t.policies), t.samples, 10.0, {"safe": str(ROOT / SAFE)},
                           membership=t.membership)
        sections.append(f"## {t.title}, K = {t.samples}\n\n`{t.command}`\n\n{markdown(results)}\n\n"
                        f"{entry_counts_line(results)}\n")
        print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
    head = ("# Closed-loop results\n\nWritten by `python benchmarks/results_md.py` on "
            f"{datetime.date.today().isoformat()}; definitions in the README's Metrics section. 10 s closed loop "
            "from step 30 (3 s of log history); every vehicle driven by the policy, the other agents replay "
            "the log; `log` is the same metrics on the logged ground truth. `blm` is the shipped model with "
            "sampling-time guidance, `blm_unguided` the bare model, `@safe` the stage-3 fine-tune "
            "(collision + off-road). Entries: vehicles the log brings in mid-episode, and of those the ones "
            "the entry check made wait or kept out.\n")
    Path(args.out).write_text(head + "\n" + "\n".join(sections))
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
