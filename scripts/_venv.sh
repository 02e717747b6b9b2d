# Sourced by demo.sh and test.sh: make .venv with spinecount installed (editable) and EXTRAS.
VENV="${SPINECOUNT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "installing spinecount${EXTRAS:+[$EXTRAS]} into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
