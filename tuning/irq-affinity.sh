#!/usr/bin/env bash
# Pins the IRQs of a network interface to the given CPUs, so that packet
# processing stays off the cores CoreMQ's shards run on.
#
#   usage: irq-affinity.sh INTERFACE CPU_LIST     e.g. irq-affinity.sh eth0 0-1
#
# Stop irqbalance first (systemctl stop irqbalance), or it moves them back.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 INTERFACE CPU_LIST (for example: $0 eth0 0-1)" >&2
    exit 2
fi
interface=$1
cpus=$2

irqs=$(awk -v dev="$interface" '$0 ~ dev { sub(":", "", $1); print $1 }' /proc/interrupts)
if [ -z "$irqs" ]; then
    echo "no IRQs found for interface $interface in /proc/interrupts; check the name with 'ip link'" >&2
    exit 1
fi
for irq in $irqs; do
    echo "$cpus" > "/proc/irq/$irq/smp_affinity_list"
    echo "IRQ $irq -> CPUs $cpus"
done
