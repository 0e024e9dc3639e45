"""Chapter 6's search over the ViT's patch side, depth and position embedding, measured.

    ATTN_COURSE_THREADS=1 python tools/vit_search.py P=6 P=10     # train these candidates, one row each
    python tools/vit_search.py --collect                          # gather the rows into the shipped table

Each candidate of ``attn_course.experiments.vit.SEARCH_CANDIDATES`` trains on translated60 for
``SEARCH_STEPS`` steps with the task's recipe and is measured on the 10,000 test canvases
(``search_row``). Rows go to ``runs/vit-search/NAME.json`` (so that two processes can share
the candidates); ``--collect`` writes them, in the candidates' order, to
``attn_course/experiments/vit_search.json``, which the chapter reads. Files are written to a
temporary name and renamed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from attn_course.experiments.vit import SEARCH_CANDIDATES, SEARCH_RESULTS, SEARCH_STEPS, search_row
from attn_course.runtime import banner, set_cpu_threads

ROWS = Path("runs/vit-search")


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"candidates (default: all): {', '.join(SEARCH_CANDIDATES)}")
    parser.add_argument("--steps", type=int, default=SEARCH_STEPS)
    parser.add_argument("--collect", action="store_true", help="gather the rows into the shipped table")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SEARCH_CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(SEARCH_CANDIDATES)}")
    if args.collect:
        missing = [n for n in SEARCH_CANDIDATES if not (ROWS / f"{n}.json").is_file()]
        if missing:
            parser.error(f"no row yet for {', '.join(missing)}: train them first")
        rows = [json.loads((ROWS / f"{n}.json").read_text()) for n in SEARCH_CANDIDATES]
        write_json(SEARCH_RESULTS, {"command": "python tools/vit_search.py", "rows": rows})
        print(f"wrote {len(rows)} rows to {SEARCH_RESULTS}")
        return 0
    set_cpu_threads()
    print(banner())
    for name in args.names or list(SEARCH_CANDIDATES):
        row = search_row(name, steps=args.steps)
        write_json(ROWS / f"{name}.json", row)
        print(f"{name:>11}: test error {row['error']:.2%}, {row['parameters']:,} parameters, "
              f"{row['multiply_adds']:,} multiply-adds, {row['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
