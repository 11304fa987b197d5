from covidct.cli import main

raise SystemExit(main())
