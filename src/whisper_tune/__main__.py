import sys

from whisper_tune.cli import main

sys.exit(main())
