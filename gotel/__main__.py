from gotel.cli import main

raise SystemExit(main())
