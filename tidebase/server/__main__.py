"""`python -m tidebase.server [--host H] [--port P]`: the same as `tidebase serve`."""

import sys

from tidebase.server.serve import main

sys.exit(main())
