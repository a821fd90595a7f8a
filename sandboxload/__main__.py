from sandboxload.cli import main

raise SystemExit(main())
