"""``python -m fused_sampler.charlm "ROMEO:" --chars 200``: the demo without the wiring."""
import sys

from . import main

raise SystemExit(main(sys.argv[1:]))
