#!/usr/bin/env bash
# `make rpm`: build helexa's RPMs and check everything a Debian machine can check.
#
#   1. the source RPM, from the Fedora spec as it is;
#   2. the binary RPMs, with rpm/macros.debian-shim standing in for Fedora's macros;
#   3. rpmlint, with rpm/helexa.rpmlintrc for what only differs on Debian;
#   4. the payload: units, sysusers files, firewalld services, configs, the executable;
#   5. systemd-analyze verify on each unit;
#   6. systemd-sysusers --root creates the users;
#   7. dnf --installroot from a local createrepo_c repository, scriptlets run by a busybox /bin/sh;
#   8. the installed helexa: --version, and config check on every installed config.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
out=$top/build/rpm
say() { printf '\n== %s\n' "$*"; }

need=()
for tool in rpmbuild rpmlint createrepo_c dnf systemd-analyze systemd-sysusers; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
[ -x /bin/busybox ] || need+=(busybox)
python3 -c "import packaging" 2>/dev/null || need+=(python3-packaging)
if [ ${#need[@]} -gt 0 ]; then
    say "installing RPM tooling from Debian packages (missing: ${need[*]})"
    if [ "$(id -u)" != 0 ]; then echo "error: run as root, or install: rpm rpmlint dnf createrepo-c busybox-static python3-packaging systemd" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rpm rpmlint dnf createrepo-c busybox-static python3-packaging systemd >/dev/null
fi

version=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
sha=$(git rev-parse --short HEAD)
day=$(date -u +%Y%m%d)
rm -rf "$out"
mkdir -p "$out"/{SOURCES,SPECS,root,repo,stubs}
defines=(--define "_topdir $out" --define "helexa_commit $sha" --define "helexa_date $day")

say "source tarball helexa-$version (commit $sha)"
git ls-files -z | tar --null -T - --transform "s,^,helexa-$version/," -czf "$out/SOURCES/helexa-$version.tar.gz"
for role in gateway neuron bench; do cp "rpm/sysusers/helexa-$role.conf" "$out/SOURCES/helexa-$role.sysusers"; done

say "1. source RPM"
rpmbuild -bs "${defines[@]}" rpm/helexa.spec

say "2. binary RPMs (Fedora macros shimmed)"
venv=$out/python
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "setuptools>=77" wheel pluggy msgspec rich-click
sed "s|@PYTHON@|$venv/bin/python3|" rpm/macros.debian-shim > "$out/macros.shim"
rpmbuild -bb --nodeps --load="$out/macros.shim" "${defines[@]}" rpm/helexa.spec >"$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; exit 1; }
rpms=("$out"/RPMS/noarch/*.rpm)
printf '%s\n' "${rpms[@]##*/}"

say "3. rpmlint"
rpmlint -r rpm/helexa.rpmlintrc rpm/helexa.spec "${rpms[@]}"

say "4. payload"
payload() { rpm -qpl "$out/RPMS/noarch/$1-$version"-*.rpm; }
expect() {
    local package=$1; shift
    local listing; listing=$(payload "$package")
    for path in "$@"; do
        grep -qx "$path" <<<"$listing" || { echo "error: $package lacks $path" >&2; exit 1; }
    done
    echo "$package: ${#@} expected paths present"
}
site=/usr/lib/python3.11/site-packages
expect helexa /usr/bin/helexa /usr/lib/systemd/system/helexa-gateway.service /usr/lib/sysusers.d/helexa-gateway.conf \
    /usr/lib/firewalld/services/helexa-gateway.xml /etc/helexa/gateway.toml /etc/helexa/models.toml $site/helexa/cli.py \
    $site/helexa/bench/dashboard/index.html $site/helexa/bench/dashboard/dashboard.js $site/helexa/bench/dashboard/dashboard.css
expect helexa-neuron /usr/lib/systemd/system/helexa-neuron.service /usr/lib/sysusers.d/helexa-neuron.conf \
    /usr/lib/firewalld/services/helexa-neuron.xml /etc/helexa/neuron.toml /usr/libexec/helexa/neuron-exec \
    /usr/bin/helexa-neuron-venv $site/helexa_torch/harness.py $site/helexa_echo.py
expect helexa-bench /usr/lib/systemd/system/helexa-bench.service /usr/lib/sysusers.d/helexa-bench.conf \
    /usr/lib/firewalld/services/helexa-bench.xml /etc/helexa/bench.toml
rpm -qp --configfiles "${rpms[@]}" | grep -q /etc/helexa/neuron.toml
rpm -qp --requires "$out/RPMS/noarch/helexa-neuron-$version"-*.rpm | grep -Eq 'python3(\.[0-9]+)?dist\(torch\)'
rpm -qp --scripts "$out/RPMS/noarch/helexa-$version"-*.rpm | grep -q 'helexa-gateway.service'

say "5. systemd-analyze verify"
units=$out/units
mkdir -p "$units"
for unit in rpm/units/*.service; do
    # verify needs the ExecStart program to exist: point it at this checkout's copies
    sed -e "s|/usr/bin/helexa |$top/.venv/bin/helexa |" -e "s|/usr/libexec/helexa/neuron-exec|$top/rpm/libexec/neuron-exec|" \
        "$unit" > "$units/$(basename "$unit")"
done
[ -x .venv/bin/helexa ] || { echo "error: run make install first (systemd-analyze needs the executable)" >&2; exit 1; }
systemd-analyze verify "$units"/*.service
echo "units verified"

say "6. systemd-sysusers --root"
sysroot=$out/sysroot
mkdir -p "$sysroot/etc"
: > "$sysroot/etc/passwd"; : > "$sysroot/etc/group"
systemd-sysusers --root="$sysroot" "$top"/rpm/sysusers/*.conf
for user in helexa-gateway helexa-neuron helexa-bench; do
    grep -q "^$user:" "$sysroot/etc/passwd" || { echo "error: $user not created" >&2; exit 1; }
done
grep -q '^video:.*helexa-neuron' "$sysroot/etc/group"
cut -d: -f1,6,7 "$sysroot/etc/passwd"

say "7. dnf --installroot from a local repository"
# What Fedora provides and this machine's repository cannot: a shell for the scriptlets (busybox)
# and stand-ins for the Python libraries the packages require.
# Everything required that our own packages do not provide (exact versions kept; for a minimum, any).
provides=$(rpm -qp --requires "${rpms[@]}" | grep -v -e '^helexa' -e '^rpmlib(' -e '^/bin/sh' -e '^config(' \
    -e 'dist(helexa' | sed -E 's/ *(>=|<=) .*$//' | sort -u)
cat > "$out/stubs/fedora-base.spec" <<SPEC
Name: fedora-base-stub
Version: 1
Release: 1
Summary: Stands in for what Fedora provides (a busybox /bin/sh and the Python libraries)
License: MIT
BuildArch: noarch
Provides: /bin/sh
$(while read -r p; do case "$p" in /*|*" = "*) echo "Provides: $p";; ?*) echo "Provides: $p = 999";; esac; done <<<"$provides")
%description
Stub for checking helexa's packages offline.
%install
install -Dm0755 /bin/busybox %{buildroot}/bin/sh
%files
/bin/sh
SPEC
rpmbuild -bb --nodeps --define "_topdir $out/stubs" --define "_build_id_links none" \
    --define "__os_install_post %{nil}" --define "_binaries_in_noarch_packages_terminate_build 0" \
    "$out/stubs/fedora-base.spec" >"$out/stubs/build.log" 2>&1 || { tail -20 "$out/stubs/build.log"; exit 1; }
cp "${rpms[@]}" "$out"/stubs/RPMS/*/fedora-base-stub-*.rpm "$out/repo/"
createrepo_c -q "$out/repo"
mkdir -p "$out/root/etc/yum.repos.d" "$out/root/dev"
mknod -m 666 "$out/root/dev/null" c 1 3 2>/dev/null || true  # scriptlets redirect to /dev/null
printf '[helexa-local]\nname=helexa local\nbaseurl=file://%s\ngpgcheck=0\n' "$out/repo" > "$out/root/etc/yum.repos.d/local.repo"
dnf_root() {
    dnf -y --installroot="$out/root" --releasever=41 --setopt=reposdir="$out/root/etc/yum.repos.d" \
        --setopt=install_weak_deps=False "$@"
}
dnf_root install helexa helexa-neuron helexa-bench helexa-acp
ls "$out/root/etc/helexa"

say "8. the installed helexa"
# With the build Python (no editable helexa in it) and the root's site-packages first: what runs is
# the installed copy, with the few libraries --version and config check need.
installed=$out/root$site
run() { (cd / && PYTHONPATH="$installed" "$venv/bin/python3" "$out/root/usr/bin/helexa" "$@"); }
(cd / && PYTHONPATH="$installed" "$venv/bin/python3" -c \
    "import helexa; assert helexa.__file__.startswith('$installed'), helexa.__file__; print('helexa from', helexa.__file__)")
run --version
for config in "$out"/root/etc/helexa/*.toml; do run config check "$config"; done
say "9. an upgrade keeps an edited config"
echo '# edited by the operator' >> "$out/root/etc/helexa/gateway.toml"
rpmbuild -bb --nodeps --load="$out/macros.shim" --define "_topdir $out/next" --define "_sourcedir $out/SOURCES" \
    --define "helexa_commit $sha" --define "helexa_date $((day + 1))" rpm/helexa.spec >"$out/next.log" 2>&1 \
    || { tail -20 "$out/next.log"; exit 1; }
cp "$out"/next/RPMS/noarch/*.rpm "$out/repo/"
createrepo_c -q --update "$out/repo"
dnf_root --refresh upgrade helexa helexa-neuron helexa-bench helexa-acp
rpm --root "$out/root" -q helexa | grep -q "$((day + 1))git"
grep -q '# edited by the operator' "$out/root/etc/helexa/gateway.toml"
run config check "$out/root/etc/helexa/gateway.toml"

say "10. removal"
dnf_root remove helexa-bench
[ ! -e "$out/root/usr/lib/systemd/system/helexa-bench.service" ]
echo "helexa-bench removed; $(rpm --root "$out/root" -qa 'helexa*' | wc -l) helexa packages remain"

say "rpm checks passed: ${#rpms[@]} packages in $out/RPMS/noarch"
