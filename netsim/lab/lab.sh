#!/usr/bin/env bash
# lab.sh: build a netns lab (real Linux NAT) from a description, by hand.
#
#   sudo netsim/lab/lab.sh up DESCRIPTION_FILE [NAME]   build lab NAME (default: demo)
#   sudo netsim/lab/lab.sh status [NAME]                namespaces, addresses, NAT tables
#   sudo netsim/lab/lab.sh exec NAME NODE CMD...        run CMD inside a node
#   sudo netsim/lab/lab.sh down [NAME]                  kill its processes, delete it
#
# The description format is the one `netsim::netns::LabBuilder::from_description`
# reads (see netsim/lab/*.lab):
#
#   site a symmetric        # site NAME PRESET: a NAT router (none for `open`)
#   host a1 a               # host NAME SITE
#   coturn                  # coturn (STUN) on 203.0.113.1 and 198.51.100.1, 3478/3479
#   miniupnpd a             # miniupnpd on site a's router (implies coturn)
#   netem a1 delay=20 loss=1  # tc netem on a node's uplink, both directions
#
# Same address plan and the same nftables rules (netsim/lab/nft/*.nft) as the Rust lab:
# internet namespace with bridge br0 (203.0.113.1/24, 198.51.100.1/24); router of NAT
# site i: wan 203.0.113.(10+i), LAN bridge `lan` 10.0.(i+1).1/24; host k of site i:
# 10.0.(i+1).(2+k); hosts of open sites: 198.51.100.(10+n) on the internet bridge.
# Namespaces are named amlab-sh-NAME-NODE, never touch the host's interfaces, and
# the Rust tests' leftover sweep leaves them alone. Logs: /tmp/amlab-sh-NAME/.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PATH=$PATH:/usr/sbin:/sbin

die() { echo "lab.sh: $*" >&2; exit 1; }
ns_of() { echo "amlab-sh-$name-$1"; }
inet() { ns_of internet; }

new_ns() {
  local ns; ns=$(ns_of "$1")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
}

veth() { ip link add name "$2" netns "$1" type veth peer name "$4" netns "$3"; }

ruleset() { # preset wan_ip
  local map
  map=$(for i in $(seq 0 1023); do printf '%d : %d, ' "$i" $((30000 + i)); done)
  sed -e "s/@WAN_IP@/$2/" -e "s/@SEQ_PORT_MAP@/${map%, }/" "$here/nft/$1.nft"
}

up_internet() {
  new_ns internet
  ip -n "$(inet)" link add br0 type bridge
  ip -n "$(inet)" link set br0 up
  ip -n "$(inet)" addr add 203.0.113.1/24 dev br0
  ip -n "$(inet)" addr add 198.51.100.1/24 dev br0
  ip netns exec "$(inet)" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward;
    echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects'
}

up_router() { # index name preset
  local i=$1 r; r=$(ns_of "$2")
  new_ns "$2"
  veth "$r" wan "$(inet)" "s$i"
  ip -n "$(inet)" link set "s$i" master br0 up
  ip -n "$r" addr add "203.0.113.$((10 + i))/24" dev wan
  ip -n "$r" link set wan up
  ip -n "$r" link add lan type bridge
  ip -n "$r" link set lan up
  ip -n "$r" addr add "10.0.$((i + 1)).1/24" dev lan
  ip -n "$r" route add default via 203.0.113.1
  ip netns exec "$r" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  ruleset "$3" "203.0.113.$((10 + i))" | ip netns exec "$r" nft -f -
}

up_host() { # name site_index k router_name | name open n
  local h; h=$(ns_of "$1")
  new_ns "$1"
  if [ "$2" = open ]; then
    veth "$h" eth0 "$(inet)" "o$3"
    ip -n "$(inet)" link set "o$3" master br0 up
    ip -n "$h" addr add "198.51.100.$((10 + $3))/24" dev eth0
    gw=198.51.100.1
  else
    veth "$h" eth0 "$(ns_of "$4")" "h$3"
    ip -n "$(ns_of "$4")" link set "h$3" master lan up
    ip -n "$h" addr add "10.0.$(($2 + 1)).$((2 + $3))/24" dev eth0
    gw=10.0.$(($2 + 1)).1
  fi
  ip -n "$h" link set eth0 up
  ip -n "$h" route add default via "$gw"
}

start() { # node logname cmd...
  local ns; ns=$(ns_of "$1"); local log="$logdir/$2.log"; shift 2
  setsid ip netns exec "$ns" "$@" >"$log" 2>&1 < /dev/null &
}

up_coturn() {
  start internet turnserver turnserver -n --stun-only --listening-ip=203.0.113.1 \
    --listening-ip=198.51.100.1 --listening-port=3478 --alt-listening-port=3479 \
    --no-tls --no-dtls --no-cli --log-file=stdout --simple-log --pidfile="$logdir/turnserver.pid"
}

up_miniupnpd() { # site index
  local r; r=$(ns_of "$1"); local conf="$logdir/miniupnpd-$1.conf"
  ip netns exec "$r" nft -f "$here/nft/miniupnpd.nft"
  cat > "$conf" <<EOF
ext_ifname=wan
listening_ip=lan
port=5000
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
system_uptime=yes
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
ext_perform_stun=yes
ext_stun_host=203.0.113.1
ext_stun_port=3478
allow 1024-65535 10.0.$(($2 + 1)).0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
  start "$1" "miniupnpd-$1" miniupnpd -f "$conf" -d -P "$logdir/miniupnpd-$1.pid"
}

up_netem() { # node words...
  local node=$1; shift
  local args=() delay=0 jitter="" loss=""
  for w in "$@"; do
    case $w in
      delay=*) delay=${w#delay=}; delay=${delay%ms} ;;
      jitter=*) jitter=${w#jitter=}; jitter=${jitter%ms} ;;
      loss=*) loss=${w#loss=}; loss=${loss%\%} ;;
      *) die "bad netem word $w" ;;
    esac
  done
  args=(delay "${delay}ms"); [ -n "$jitter" ] && args+=("${jitter}ms")
  [ -n "$loss" ] && args+=(loss "$loss%")
  local own_if peer_ns peer_if
  read -r own_if peer_ns peer_if < "$logdir/uplink-$node"
  ip netns exec "$(ns_of "$node")" tc qdisc replace dev "$own_if" root netem "${args[@]}" ||
    { echo "lab.sh: netem unavailable (kernel without sch_netem?); skipped for $node" >&2; return 0; }
  ip netns exec "$peer_ns" tc qdisc replace dev "$peer_if" root netem "${args[@]}"
}

cmd_up() {
  local desc=$1
  [ -r "$desc" ] || die "cannot read $desc"
  [ -z "$(ip netns list | grep "^amlab-sh-$name-" || true)" ] || die "lab $name exists (lab.sh down $name)"
  # Parse and check the whole description before building anything.
  local -a sites=() presets=() hosts=() host_sites=() extra=()
  while read -r kw a b rest; do
    case ${kw:-} in
      '') ;;
      site) [ "$b" = open ] || [ -r "$here/nft/$b.nft" ] || die "unknown preset: $b"
            sites+=("$a"); presets+=("$b") ;;
      host) hosts+=("$a"); host_sites+=("$b") ;;
      coturn|miniupnpd|netem) extra+=("$kw ${a:-} ${b:-} ${rest:-}") ;;
      *) die "unknown statement: $kw" ;;
    esac
  done < <(sed 's/#.*//' "$desc")
  local s all=" ${sites[*]} ${hosts[*]} "
  for s in "${host_sites[@]}"; do [[ " ${sites[*]} " == *" $s "* ]] || die "host on unknown site $s"; done
  for s in "${extra[@]}"; do
    set -- $s
    case $1 in
      miniupnpd) [[ " ${sites[*]} " == *" $2 "* ]] || die "miniupnpd on unknown site $2" ;;
      netem) [[ $all == *" $2 "* ]] || die "netem on unknown node $2" ;;
    esac
  done
  mkdir -p "$logdir"
  trap 'trap - ERR; echo "lab.sh: up failed, tearing down" >&2; cmd_down; exit 1' ERR
  up_internet
  local i k open=0
  for i in "${!sites[@]}"; do
    [ "${presets[$i]}" = open ] || {
      up_router "$i" "${sites[$i]}" "${presets[$i]}"
      echo "wan $(inet) s$i" > "$logdir/uplink-${sites[$i]}"
    }
  done
  for i in "${!sites[@]}"; do
    k=0
    for j in "${!hosts[@]}"; do
      [ "${host_sites[$j]}" = "${sites[$i]}" ] || continue
      if [ "${presets[$i]}" = open ]; then
        up_host "${hosts[$j]}" open "$open"; echo "eth0 $(inet) o$open" > "$logdir/uplink-${hosts[$j]}"
        open=$((open + 1))
      else
        up_host "${hosts[$j]}" "$i" "$k" "${sites[$i]}"
        echo "eth0 $(ns_of "${sites[$i]}") h$k" > "$logdir/uplink-${hosts[$j]}"
        k=$((k + 1))
      fi
    done
  done
  local line need_coturn=no
  for line in "${extra[@]}"; do case $line in coturn*|miniupnpd*) need_coturn=yes ;; esac; done
  [ $need_coturn = no ] || { up_coturn; sleep 1; }
  for line in "${extra[@]}"; do
    set -- $line
    case $1 in
      miniupnpd) for i in "${!sites[@]}"; do [ "${sites[$i]}" = "$2" ] && up_miniupnpd "$2" "$i"; done ;;
      netem) node=$2; shift 2; up_netem "$node" "$@" ;;
    esac
  done
  trap - ERR
  cmd_status
}

cmd_status() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^amlab-sh-$name-" | sort); do
    echo "== ${ns#amlab-sh-$name-} ($ns)"
    ip -n "$ns" -4 -brief addr | grep -v '^lo' | sed 's/^/   /'
    ip netns exec "$ns" nft list tables 2>/dev/null | sed 's/^/   nft: /'
    pids=$(ip netns pids "$ns" | paste -sd, -)
    [ -z "$pids" ] || echo "   processes: $(ps -o comm= -p "$pids" | tr '\n' ' ')"
  done
}

cmd_down() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^amlab-sh-$name-" || true); do
    for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
  rm -rf "$logdir"
}

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
action=${1:-}; shift || true
case $action in
  up) [ $# -ge 1 ] || die "usage: lab.sh up DESCRIPTION [NAME]"; desc=$1; name=${2:-demo} ;;
  down|status) name=${1:-demo} ;;
  exec) [ $# -ge 3 ] || die "usage: lab.sh exec NAME NODE CMD..."; name=$1 ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
[[ $name =~ ^[a-z0-9]{1,12}$ ]] || die "bad lab name $name"
logdir=/tmp/amlab-sh-$name
case $action in
  up) cmd_up "$desc" ;;
  status) cmd_status ;;
  down) cmd_down ;;
  exec) node=$2; shift 2; exec ip netns exec "$(ns_of "$node")" "$@" ;;
esac
