from kaitopy.cli import main

raise SystemExit(main())
