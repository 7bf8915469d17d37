from momok_pyg.report.document import main

raise SystemExit(main())
