"""`ray job submit` entrypoint of `tunefleet merge` (jobs/run.py is `tunefleet run`'s):

    ray job submit --working-dir . -- python jobs/merge.py models:/a/1 models:/b/1 --out merged/ab --method ties
"""

import sys
from pathlib import Path

# platform/ is a plain folder (never a package: it would shadow the stdlib `platform`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from tunefleet.cli.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["merge", *sys.argv[1:]]))
