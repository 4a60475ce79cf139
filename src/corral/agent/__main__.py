"""``python -m corral.agent`` runs the node agent."""

from corral.agent.main import main

raise SystemExit(main())
