"""What the tests share: tiny real artifacts, servers over real HTTP, Redis paths, load.

``tests`` is on ``sys.path`` (pyproject's ``pythonpath``), so a test imports
``from support.servers import start_server``; fixtures come from the conftests, which take
the shared ones from :mod:`support.fixtures`.
"""
