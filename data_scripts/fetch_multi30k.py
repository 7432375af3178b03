"""Download the German-English Multi30k corpus: see mindtrans/fetch.py, or run with --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mindtrans.fetch import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
