"""Read the array and the table back from a Tiled server and compare them exactly.

    python tiled_client.py URI DATA.npz [CA.pem]

Prints "array ok" and "table ok" and exits 0 only when both match DATA.npz.
"""

import sys

import numpy
from tiled.client import from_uri

uri, expected = sys.argv[1], numpy.load(sys.argv[2])
client = from_uri(uri, verify=sys.argv[3] if len(sys.argv) > 3 else True)
array = client["array"].read()
table = client["table"].read()
same_array = array.shape == expected["array"].shape and numpy.array_equal(array,
                                                                          expected["array"])
same_table = (numpy.array_equal(table["x"].to_numpy(), expected["x"])
              and numpy.array_equal(table["y"].to_numpy(), expected["y"]))
print("array ok" if same_array else f"array differs: {array!r}")
print("table ok" if same_table else f"table differs: {table!r}")
sys.exit(0 if same_array and same_table else 1)
