# The test environment's location, shared by the test scripts: outside the checkout (it holds
# about 1.7 GB: PyTorch, Keras and the other references), $COVIDX_TEST_VENV where set.
venv=${COVIDX_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/covidx/test-venv}
