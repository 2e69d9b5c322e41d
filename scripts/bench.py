"""`make bench`: the service against the naive reference under load; see app/bench.py for the options.

python scripts/bench.py [--duration 5] [--repeat 3] [--model lstm] [--json bench.json] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from app.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
