"""`python -m mindtrans` is the `mindtrans` command."""
import sys

from mindtrans.cli import main

sys.exit(main())
