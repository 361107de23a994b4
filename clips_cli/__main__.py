import sys

from clips_cli.main import main

sys.exit(main())
