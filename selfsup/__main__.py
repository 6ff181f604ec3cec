from selfsup.cli import main

raise SystemExit(main())
