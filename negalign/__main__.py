import sys

from negalign.cli import main

sys.exit(main())
