#!/usr/bin/env bash
# A one-node Slurm on localhost, for testing the batch scripts in slurm/ (make test-slurm).
#
#   slurm/local-cluster.sh start    install Debian's packages if missing, start munged,
#                                   slurmctld and slurmd, wait for the node to be idle
#   slurm/local-cluster.sh stop     stop the daemons this script started
#   slurm/local-cluster.sh status   daemons, sinfo, and the line that points clients at it
#
# Needs root (apt-get, and the daemons run as root). No systemd: the daemons are started by
# hand. munge authenticates (the package's key, or a new one); proctrack/linuxproc and
# task/none need no cgroups; select/cons_tres; the node line comes from `slurmd -C`;
# MpiDefault=pmi2, so `srun -n 2 python prog.py` gives a 2-rank COMM_WORLD with the MPICH
# wheel (with --mpi=none it would silently give two 1-rank jobs).
#
# Everything lives under MPIGRAD_SLURM_DIR (default /tmp/mpigrad-slurm): slurm.conf, state,
# spool, logs, pid files. Clients find the cluster with SLURM_CONF=$MPIGRAD_SLURM_DIR/slurm.conf.
set -euo pipefail

DIR=${MPIGRAD_SLURM_DIR:-/tmp/mpigrad-slurm}
CONF=$DIR/slurm.conf
START_TIMEOUT=${MPIGRAD_SLURM_START_TIMEOUT:-60}
PACKAGES=(slurmctld slurmd slurm-client munge)
export SLURM_CONF=$CONF

die() { echo "local-cluster: error: $*" >&2; exit 1; }
say() { echo "local-cluster: $*"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

show_logs() {
    local log
    for log in "$DIR"/log/*.log; do
        [ -f "$log" ] || continue
        echo "---- last lines of $log" >&2
        tail -n 20 "$log" >&2
    done
}

install_packages() {
    local missing=0 cmd
    for cmd in slurmctld slurmd sbatch srun sacct munged munge; do
        command -v "$cmd" > /dev/null || missing=1
    done
    [ "$missing" -eq 0 ] && return
    command -v apt-get > /dev/null || die "Slurm is not installed and there is no apt-get"
    say "installing ${PACKAGES[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq "${PACKAGES[@]}" > "$DIR/log/apt-get.log" 2>&1 \
        || { tail -n 20 "$DIR/log/apt-get.log" >&2; die "apt-get install ${PACKAGES[*]} failed"; }
}

munge_works() { munge -n < /dev/null 2> /dev/null | unmunge > /dev/null 2>&1; }

start_munge() {
    if munge_works; then
        say "munged already running"
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 600 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge)"
    cp /run/munge/munged.pid "$DIR/munged.pid"  # ours: stop ends it
    local i
    for i in $(seq 50); do munge_works && return; sleep 0.1; done
    die "munged started but munge -n | unmunge fails"
}

write_conf() {
    local node host
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=N" then an UpTime line.
    node=$(slurmd -C | grep '^NodeName=') || die "slurmd -C printed no NodeName line"
    host=${node%% *}
    host=${host#NodeName=}
    cat > "$CONF" <<EOF
# Written by slurm/local-cluster.sh: a one-node test cluster on localhost.
ClusterName=mpigrad
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmi2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
# Finished jobs stay in scontrol show job for an hour.
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (apt-get and the Slurm daemons); run it as root"
    if alive "$DIR/slurmctld.pid" || alive "$DIR/slurmd.pid"; then
        say "already running; status:"
        status
        return
    fi
    rm -rf "$DIR/state" "$DIR/spool"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    install_packages
    start_munge
    write_conf
    slurmctld -f "$CONF" || { show_logs; die "slurmctld did not start"; }
    slurmd -f "$CONF" || { show_logs; die "slurmd did not start"; }
    local waited=0 state=""
    while [ "$waited" -lt "$((START_TIMEOUT * 2))" ]; do
        state=$(sinfo -h -o %T 2> /dev/null | head -n 1 || true)
        case $state in
            idle|mixed|allocated) break ;;
        esac
        sleep 0.5
        waited=$((waited + 1))
    done
    case $state in
        idle|mixed|allocated) ;;
        *) show_logs; die "node not idle after ${START_TIMEOUT} s (state: '${state:-none}')" ;;
    esac
    say "started; node $(sinfo -h -o '%N %c CPUs %T')"
    say "clients: export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid NAME PIDFILE
    local name=$1 pidfile=$2 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2> /dev/null; then
        kill "$pid" 2> /dev/null || true
        for i in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2> /dev/null; then
            say "$name ($pid) still running after 10 s: SIGKILL"
            kill -9 "$pid" 2> /dev/null || true
        fi
        say "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop() {
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munged.pid"
}

status() {
    local name running=0
    for name in munged slurmctld slurmd; do
        if alive "$DIR/$name.pid"; then
            echo "$name: running (pid $(cat "$DIR/$name.pid"))"
            running=1
        elif [ "$name" = munged ] && munge_works; then
            echo "munged: running (not started by this script)"
        else
            echo "$name: not running"
        fi
    done
    if [ "$running" -eq 1 ] && command -v sinfo > /dev/null; then
        sinfo || true
        echo "clients: export SLURM_CONF=$CONF"
    fi
    alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
