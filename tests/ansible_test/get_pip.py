"""Stand-in for the get-pip.py that ansible-test downloads from outside PyPI to put pip into its sanity venvs.

ansible-test runs it as `python get_pip.py [pip options] pip==X [--no-setuptools] [--no-wheel]` inside a venv made
without pip; this installs the venv's bundled pip (ensurepip) and then the requested packages from the package
index pip is configured for. scripts/setup puts it where ansible-test looks before downloading.
"""

import subprocess
import sys

# ensurepip in a child process: in-process it would drop the PIP_* settings (index, certificates) for the install.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
