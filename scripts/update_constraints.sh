#!/usr/bin/env bash
# Refresh constraints.txt, the versions `pip install -e ".[dev]" -c constraints.txt` installs (README):
# install the newest releases the registry serves into a fresh venv, run the test suite there, and only if it
# passes, write that venv's versions to constraints.txt. Review `git diff constraints.txt`, then commit it.
#   bash scripts/update_constraints.sh            # uses python3; VENV=/path keeps the venv for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -q -U -e ".[dev]"
"$venv/bin/python" -m pytest -q
{
    echo "# The versions the test suite last passed with (\`bash scripts/update_constraints.sh\` on $(date -u +%F), $("$venv/bin/python" --version))."
    echo "# Used by the README's install: pip install -e \".[dev]\" -c constraints.txt"
    "$venv/bin/pip" freeze --exclude-editable | grep -v '^diffalign'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated from $venv; review with: git diff constraints.txt"
