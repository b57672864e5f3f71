import sys

from refapp.cli import main

sys.exit(main())
