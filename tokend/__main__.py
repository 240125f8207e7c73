from tokend.cli.main import main

raise SystemExit(main())
