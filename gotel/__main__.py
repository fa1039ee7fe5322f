from gotel.cli.main import main

raise SystemExit(main())
