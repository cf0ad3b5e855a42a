# Sourced by the GPU scripts: this project importable on a CUDA machine that has PyTorch, Triton and
# transformers but not this project installed (the device machine lent to some sessions).
# Wheels in .whl/ (pip download ... -d .whl NAME==VERSION for that machine's Python: protobuf and grpcio
# at the versions the stubs were generated with, gguf for the GGUF loader) are installed first.
export PYTHONUNBUFFERED=1
site=/tmp/fedmezo-site
pkg=/tmp/fedmezo-pkg
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || return 1
fi
rm -rf "$pkg" && mkdir -p "$pkg"  # the installed layout: server/, client/, dashboard/ live under fedmezo/
cp -r fedmezo "$pkg/" && cp -r client "$pkg/fedmezo/client" && cp -r server "$pkg/fedmezo/server" \
  && cp -r dashboard "$pkg/fedmezo/dashboard" || return 1
export PYTHONPATH="$site:$pkg"
