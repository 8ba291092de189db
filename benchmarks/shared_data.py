"""Where the benchmarks read real data: ``$BLM_GYM_DATA``, else ``../shared/data`` beside the repo."""
import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("BLM_GYM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
