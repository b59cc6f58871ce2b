"""A Tiled server with a small array and table, for the acceptance tests.

    python tiled_server.py HOST PORT DATA.npz [CERT.pem KEY.pem]

DATA.npz holds ``array``, ``x`` and ``y``; the table has columns x and y. With a
certificate and key the server speaks HTTPS. Anonymous reads are allowed.
"""

import sys

import numpy
import pandas
import uvicorn
from tiled.adapters.array import ArrayAdapter
from tiled.adapters.dataframe import DataFrameAdapter
from tiled.adapters.mapping import MapAdapter
from tiled.config import Authentication
from tiled.server.app import build_app

host, port, data = sys.argv[1], int(sys.argv[2]), numpy.load(sys.argv[3])
tree = MapAdapter({
    "array": ArrayAdapter.from_array(data["array"]),
    "table": DataFrameAdapter.from_pandas(
        pandas.DataFrame({"x": data["x"], "y": data["y"]}), npartitions=1),
})
app = build_app(tree, authentication=Authentication(allow_anonymous_access=True,
                                                    single_user_api_key="unused"))
tls = {"ssl_certfile": sys.argv[4], "ssl_keyfile": sys.argv[5]} if len(sys.argv) > 5 else {}
uvicorn.run(app, host=host, port=port, log_level="warning", **tls)
