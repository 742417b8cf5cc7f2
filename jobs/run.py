"""`ray job submit` entrypoint:

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/run.py jobs/configs/sft_lora.yaml trainer.num_workers=2

Uses RAY_ADDRESS (set by `ray job submit`; without it, a new local cluster), and ships this checkout's
`tunefleet` package to the workers, so the cluster image needs only the dependencies.
"""

import sys
from pathlib import Path

# platform/ is a plain folder (never a package: it would shadow the stdlib `platform`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from tunefleet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]], ship_package=True))
