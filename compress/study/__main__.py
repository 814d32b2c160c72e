"""`python -m compress.study demo|reproduce ...`: the study runner (`compress.study.runner`)."""

import sys

from compress.study.runner import main

sys.exit(main())
