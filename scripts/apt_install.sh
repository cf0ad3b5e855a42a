# Sourced by the install_*.sh scripts. `apt_install WHO PACKAGE...` installs Debian packages with apt-get,
# as root or through sudo; without either it says so (prefixed WHO) and returns 1.
apt_install() {
    local who=$1 sudo=""
    shift
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "$who: not root and no sudo: cannot install $*" >&2
            return 1
        fi
    fi
    echo "$who: installing $* with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
