//! The MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71
//! (data), as every PC has it: where a guest reads the wall clock at boot
//! and writes it back (`hwclock --systohc`, NTP's 11-minute mode).
//!
//! The guest's time is the host's UTC plus an offset in seconds, so the
//! clock runs with the host's and never drifts on its own; `<clock
//! offset=...>` sets the offset at start, and a guest that sets the clock
//! changes it. The device then tells its [`OffsetSink`] the new offset, and
//! the helper tells the broker (libvirt's RTC_CHANGE event).
//!
//! Registers, per the datasheet: time and alarm 0x00-0x09 in BCD or binary
//! and 12- or 24-hour form as register B says; A (the divider, and UIP for
//! the 244 µs before each second's update), B (SET freezes the time
//! registers while the guest writes them: the new time applies when SET
//! clears), C (flags, cleared by the read), D (valid RAM and time); the
//! century at 0x32 (where the FADT points); and 128 bytes of CMOS RAM with
//! the memory-size bytes a BIOS leaves there. Bit 7 of the index (NMI
//! disable) is ignored. The update-ended and alarm interrupts (IRQ 8, as
//! Linux's rtc-cmos uses them for alarms and `hwclock`'s wait for a tick)
//! are raised once a second by [`Rtc::tick`], which the helper's control
//! loop calls while one is enabled ([`Rtc::next_tick_ms`]); a guest that
//! polls register C sees the same flags. Periodic interrupts are not
//! emulated (register A's rate is kept, PF never sets).
//!
//! Every guest value is checked: a time with a digit that is not BCD, a
//! field out of range or a day its month lacks changes nothing (the clock
//! runs on with the time it had), and no value can panic.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BusDevice, DeviceState, Irq, Request, StateError};
use libvirtd::calendar::{Fields, days_in_month, fields, to_seconds, weekday};

/// The index port; the data port follows it.
pub const BASE: u16 = 0x70;
/// Index and data.
pub const LEN: u64 = 2;
/// Where the FADT says the century is.
pub const CENTURY: u8 = 0x32;

const INDEX: u64 = 0;
const DATA: u64 = 1;
const RAM_LEN: usize = 128;
/// The index port's NMI-disable bit, which is not the index's.
const NMI_DISABLE: u8 = 0x80;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

/// Register A: update in progress (read-only).
const UIP: u8 = 0x80;
/// Register A at power-on: the 32.768 kHz time base, a 1024 Hz rate.
const REG_A_INIT: u8 = 0x26;
/// Register B: updates frozen while the guest sets the time.
const SET: u8 = 0x80;
/// Register B: update-ended interrupt enable (cleared when SET is set).
const UIE: u8 = 0x10;
/// Register B: alarm interrupt enable.
const AIE: u8 = 0x20;
/// Alarm registers, beside seconds, minutes and hours.
const ALARM_SECONDS: u8 = 0x01;
const ALARM_MINUTES: u8 = 0x03;
const ALARM_HOURS: u8 = 0x05;
/// An alarm register at or above this matches any value ("don't care").
const DONT_CARE: u8 = 0xc0;
/// Register B: binary, not BCD.
const DM_BINARY: u8 = 0x04;
/// Register B: 24-hour, not 12-hour.
const HOURS_24: u8 = 0x02;
/// Register B at power-on: BCD, 24-hour (what BIOSes leave and QEMU has).
const REG_B_INIT: u8 = HOURS_24;
/// Register C: interrupt request, periodic, alarm, update-ended.
const IRQF: u8 = 0x80;
const PF: u8 = 0x40;
const AF: u8 = 0x20;
const UF: u8 = 0x10;
/// Register D: valid RAM and time (the battery is good).
const VRT: u8 = 0x80;
/// 12-hour form: the PM bit of the hours register.
const PM: u8 = 0x80;
/// How long before each second's update UIP reads 1, in nanoseconds.
const UIP_NS: u32 = 244_000;

/// Seconds from 1970 to 0000-01-01 and to 9999-12-31 23:59:59: the times the
/// registers (century 00-99, year 00-99) can hold. Guest time stays in them.
const MIN_TIME: i64 = -62_167_219_200;
const MAX_TIME: i64 = 253_402_300_799;

/// Where the host's time comes from: UTC seconds since 1970 and the
/// nanoseconds into that second (a test's own clock, in tests).
pub trait HostClock: Send {
    /// The host's UTC now.
    fn now(&self) -> (i64, u32);
}

/// The host's real clock (`CLOCK_REALTIME`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl HostClock for SystemClock {
    fn now(&self) -> (i64, u32) {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            // A host clock before 1970: count backwards.
            Err(e) => (-(e.duration().as_secs() as i64), 0),
        }
    }
}

/// Told each time the guest sets the clock (the guest's time minus the
/// host's UTC, in seconds), and when it enables an interrupt that needs
/// [`Rtc::tick`]. Called on a vCPU thread; must not block.
pub trait OffsetSink: Send + Sync {
    /// The guest set its clock to host UTC + `offset` seconds.
    fn offset_changed(&self, offset: i64);
    /// The guest enabled the update or alarm interrupt: whoever calls
    /// [`Rtc::tick`] must ask [`Rtc::next_tick_ms`] again.
    fn ticks_wanted(&self);
}

/// The saved state: the offset and the registers the guest wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// The guest's time minus the host's UTC, in seconds.
    pub offset: i64,
    /// The index last written to port 0x70.
    pub index: u8,
    /// CMOS RAM (the time registers hold what was latched or written).
    pub ram: Vec<u8>,
    /// A time register was written while SET froze them.
    pub dirty: bool,
    /// Register C's flags not yet read.
    pub flags: u8,
    /// The guest second of the last update cycle seen.
    pub last_update: i64,
}

/// The clock.
pub struct Rtc {
    clock: Box<dyn HostClock>,
    sink: Arc<dyn OffsetSink>,
    irq: Arc<dyn Irq>,
    offset: i64,
    index: u8,
    ram: [u8; RAM_LEN],
    dirty: bool,
    flags: u8,
    last_update: i64,
}

impl Rtc {
    /// A clock showing host UTC + `offset` seconds, telling `sink` when the
    /// guest sets it and raising `irq` (IRQ 8); `memory` is (bytes of RAM
    /// below 4 GiB, bytes above), whose sizes CMOS RAM holds as a BIOS
    /// leaves them.
    pub fn new(
        clock: Box<dyn HostClock>,
        offset: i64,
        sink: Arc<dyn OffsetSink>,
        irq: Arc<dyn Irq>,
        memory: (u64, u64),
    ) -> Rtc {
        let mut ram = [0u8; RAM_LEN];
        ram[usize::from(REG_A)] = REG_A_INIT;
        ram[usize::from(REG_B)] = REG_B_INIT;
        memory_sizes(&mut ram, memory.0, memory.1);
        let mut rtc = Rtc { clock, sink, irq, offset: 0, index: 0, ram, dirty: false, flags: 0, last_update: 0 };
        rtc.offset = rtc.bounded(offset);
        rtc.last_update = rtc.guest_now().0;
        rtc
    }

    /// Runs the update cycles due since the last: raises IRQ 8 where an
    /// enabled flag newly set. The control loop calls it when
    /// [`Rtc::next_tick_ms`] says.
    pub fn tick(&mut self) {
        if self.catch_up() {
            self.irq.raise();
        }
    }

    /// Milliseconds until the next update cycle, while an interrupt that
    /// one raises is enabled; `None` when none is (nothing to wake for).
    pub fn next_tick_ms(&self) -> Option<u16> {
        if self.reg_b() & (UIE | AIE) == 0 || self.reg_b() & SET != 0 {
            return None;
        }
        let (_, nanos) = self.guest_now();
        // Rounded up, so the loop wakes just after the second turns.
        Some(((1_000_000_000 - nanos.min(999_999_999)) / 1_000_000 + 1) as u16)
    }

    /// Sets register C's flags for the update cycle, if the second moved
    /// since the last one seen (none while SET holds the clock); true if
    /// that newly requests an interrupt.
    fn catch_up(&mut self) -> bool {
        let t = self.guest_now().0;
        if self.reg_b() & SET != 0 || t == self.last_update {
            return false;
        }
        self.last_update = t;
        self.flags |= UF;
        let alarm =
            [(ALARM_SECONDS, SECONDS), (ALARM_MINUTES, MINUTES), (ALARM_HOURS, HOURS)].iter().all(|&(a, reg)| {
                self.ram[usize::from(a)] >= DONT_CARE || self.ram[usize::from(a)] == self.time_register(reg, t)
            });
        if alarm {
            self.flags |= AF;
        }
        self.request()
    }

    /// Sets IRQF where a flag is set whose interrupt is enabled; true if it
    /// was not set before.
    fn request(&mut self) -> bool {
        let wanted = self.flags & self.reg_b() & (PF | AF | UF) != 0;
        let new = wanted && self.flags & IRQF == 0;
        if wanted {
            self.flags |= IRQF;
        }
        new
    }

    /// The offset the guest's clock runs at now.
    #[cfg_attr(not(test), expect(dead_code, reason = "save/restore will read it; tests do now"))]
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// `offset`, limited so that the guest's time stays one the registers hold.
    fn bounded(&self, offset: i64) -> i64 {
        let host = self.clock.now().0;
        host.saturating_add(offset).clamp(MIN_TIME, MAX_TIME) - host
    }

    /// The guest's time: seconds since 1970 and nanoseconds into the second.
    fn guest_now(&self) -> (i64, u32) {
        let (secs, nanos) = self.clock.now();
        (secs.saturating_add(self.offset).clamp(MIN_TIME, MAX_TIME), nanos)
    }

    fn reg_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.reg_b() & DM_BINARY != 0 { v } else { (v / 10) << 4 | (v % 10) }
    }

    fn decode(&self, r: u8) -> Option<u32> {
        if self.reg_b() & DM_BINARY != 0 {
            return Some(u32::from(r));
        }
        let (hi, lo) = (r >> 4, r & 0x0f);
        (hi <= 9 && lo <= 9).then_some(u32::from(hi * 10 + lo))
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.reg_b() & HOURS_24 != 0 {
            return self.encode(hour);
        }
        let twelve = if hour.is_multiple_of(12) { 12 } else { hour % 12 };
        self.encode(twelve) | if hour >= 12 { PM } else { 0 }
    }

    fn decode_hour(&self, r: u8) -> Option<u32> {
        if self.reg_b() & HOURS_24 != 0 {
            return self.decode(r).filter(|h| *h < 24);
        }
        let twelve = self.decode(r & !PM).filter(|h| (1..=12).contains(h))?;
        Some(twelve % 12 + if r & PM != 0 { 12 } else { 0 })
    }

    /// What time register `reg` reads for time `t`.
    fn time_register(&self, reg: u8, t: i64) -> u8 {
        let f = fields(t);
        match reg {
            SECONDS => self.encode(f.second),
            MINUTES => self.encode(f.minute),
            HOURS => self.encode_hour(f.hour),
            WEEKDAY => self.encode(weekday(t)),
            DAY => self.encode(f.day),
            MONTH => self.encode(f.month),
            YEAR => self.encode(f.year.rem_euclid(100) as u32),
            CENTURY => self.encode(f.year.div_euclid(100) as u32),
            _ => 0,
        }
    }

    /// The time the registers in `ram` hold, if it is one.
    fn registers_time(&self, ram: &[u8; RAM_LEN]) -> Option<i64> {
        let reg = |r: u8| ram[usize::from(r)];
        let second = self.decode(reg(SECONDS)).filter(|s| *s < 60)?;
        let minute = self.decode(reg(MINUTES)).filter(|m| *m < 60)?;
        let hour = self.decode_hour(reg(HOURS))?;
        let month = self.decode(reg(MONTH)).filter(|m| (1..=12).contains(m))?;
        let year = self.decode(reg(YEAR)).filter(|y| *y < 100)?;
        let century = self.decode(reg(CENTURY)).filter(|c| *c < 100)?;
        let year = i64::from(century * 100 + year);
        let day = self.decode(reg(DAY)).filter(|d| (1..=days_in_month(year, month)).contains(d))?;
        Some(to_seconds(Fields { year, month, day, hour, minute, second }))
    }

    /// Copies the running time into the time registers (SET was just set).
    fn latch(&mut self) {
        let t = self.guest_now().0;
        for reg in [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY] {
            self.ram[usize::from(reg)] = self.time_register(reg, t);
        }
    }

    /// The guest set the clock to what `ram`'s registers say: the offset
    /// follows, and the sink hears of it. A time that is none changes nothing.
    fn apply(&mut self, ram: &[u8; RAM_LEN]) {
        let Some(t) = self.registers_time(ram) else { return };
        self.offset = self.bounded(t.saturating_sub(self.clock.now().0));
        self.sink.offset_changed(self.offset);
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let frozen = self.reg_b() & SET != 0;
        match reg {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY if !frozen => {
                self.time_register(reg, self.guest_now().0)
            }
            REG_A => {
                let (_, nanos) = self.guest_now();
                let updating = !frozen && nanos >= 1_000_000_000 - UIP_NS;
                self.ram[usize::from(REG_A)] & !UIP | if updating { UIP } else { 0 }
            }
            REG_C => {
                // A polling guest sees the update it waited for; reading clears.
                self.catch_up();
                std::mem::take(&mut self.flags)
            }
            REG_D => VRT,
            _ => self.ram[usize::from(reg)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        let frozen = self.reg_b() & SET != 0;
        match reg {
            SECONDS | MINUTES | HOURS | DAY | MONTH | YEAR | CENTURY if frozen => {
                self.ram[usize::from(reg)] = value;
                self.dirty = true;
            }
            SECONDS | MINUTES | HOURS | DAY | MONTH | YEAR | CENTURY => {
                // The clock runs: the write sets that field of the time now.
                self.latch();
                let mut ram = self.ram;
                ram[usize::from(reg)] = value;
                self.apply(&ram);
            }
            // The day of the week follows from the date.
            WEEKDAY => {}
            REG_A => self.ram[usize::from(REG_A)] = value & !UIP,
            REG_B => self.write_reg_b(value),
            REG_C | REG_D => {}
            _ => self.ram[usize::from(reg)] = value,
        }
    }

    fn write_reg_b(&mut self, value: u8) {
        let was = self.reg_b() & SET != 0;
        let now = value & SET != 0;
        // The format bits first: what the guest wrote while frozen is read
        // in the format that holds when SET clears.
        self.ram[usize::from(REG_B)] = if now { value & !UIE } else { value };
        // An interrupt enabled while its flag waits is requested at once.
        if self.request() {
            self.irq.raise();
        }
        if self.next_tick_ms().is_some() {
            self.sink.ticks_wanted();
        }
        match (was, now) {
            (false, true) => {
                self.latch();
                self.dirty = false;
            }
            (true, false) => {
                if std::mem::take(&mut self.dirty) {
                    let ram = self.ram;
                    self.apply(&ram);
                }
                // The clock runs again from here: no update for the stop.
                self.last_update = self.guest_now().0;
            }
            _ => {}
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = data.first_mut() else { return };
        if offset == DATA {
            *first = self.read_register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Request> {
        let &value = data.first()?;
        match offset {
            INDEX => self.index = value & !NMI_DISABLE,
            DATA => self.write_register(self.index, value),
            _ => {}
        }
        None
    }

    fn state(&self) -> DeviceState {
        DeviceState::Rtc(RtcState {
            offset: self.offset,
            index: self.index,
            ram: self.ram.to_vec(),
            dirty: self.dirty,
            flags: self.flags,
            last_update: self.last_update,
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Rtc(s) = state else { return Err(StateError::Kind { want: "rtc", got: state.kind() }) };
        let invalid = |reason: String| StateError::Invalid { kind: "rtc", reason };
        let ram: [u8; RAM_LEN] = s
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("{} bytes of CMOS RAM, not {RAM_LEN}", s.ram.len())))?;
        if usize::from(s.index) >= RAM_LEN {
            return Err(invalid(format!("index {:#x} past CMOS RAM", s.index)));
        }
        self.offset = self.bounded(s.offset);
        (self.index, self.ram, self.dirty) = (s.index, ram, s.dirty);
        (self.flags, self.last_update) = (s.flags & (IRQF | PF | AF | UF), s.last_update);
        Ok(())
    }
}

/// The memory-size bytes a PC BIOS leaves in CMOS RAM: base memory (640
/// KiB), extended memory from 1 MiB in KiB (at most 63 MiB shows), memory
/// from 16 MiB in 64 KiB units (at most 0xffff), memory above 4 GiB in 64
/// KiB units (three bytes, as QEMU's firmware reads them), and the
/// checksum over 0x10-0x2d.
fn memory_sizes(ram: &mut [u8; RAM_LEN], low: u64, high: u64) {
    let put16 = |ram: &mut [u8; RAM_LEN], at: usize, v: u64| {
        let v = v.min(0xffff) as u16;
        ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    put16(ram, 0x15, 640);
    let extended_kib = low.saturating_sub(1 << 20) / 1024;
    put16(ram, 0x17, extended_kib);
    put16(ram, 0x30, extended_kib);
    put16(ram, 0x34, low.saturating_sub(16 << 20) / 65536);
    let above = (high / 65536).min(0xff_ffff) as u32;
    ram[0x5b..0x5e].copy_from_slice(&above.to_le_bytes()[..3]);
    let sum: u16 = ram[0x10..0x2e].iter().map(|b| u16::from(*b)).sum();
    ram[0x2e..0x30].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

    use super::*;
    use crate::devices::testing::CountingIrq;

    /// A host clock the test moves.
    #[derive(Clone, Default)]
    struct TestClock(Arc<(AtomicI64, AtomicU32)>);

    impl HostClock for TestClock {
        fn now(&self) -> (i64, u32) {
            (self.0.0.load(Ordering::SeqCst), self.0.1.load(Ordering::SeqCst))
        }
    }

    impl TestClock {
        fn set(&self, secs: i64, nanos: u32) {
            self.0.0.store(secs, Ordering::SeqCst);
            self.0.1.store(nanos, Ordering::SeqCst);
        }
    }

    #[derive(Default)]
    struct Offsets(Mutex<Vec<i64>>, AtomicU32);

    impl OffsetSink for Offsets {
        fn offset_changed(&self, offset: i64) {
            self.0.lock().unwrap().push(offset);
        }
        fn ticks_wanted(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// 2026-12-03 22:30:15 UTC, a Thursday.
    const HOST: i64 = 1_796_337_015;

    fn rtc(offset: i64) -> (Rtc, TestClock, Arc<Offsets>) {
        let (r, clock, sink, _) = rtc_irq(offset);
        (r, clock, sink)
    }

    fn rtc_irq(offset: i64) -> (Rtc, TestClock, Arc<Offsets>, Arc<CountingIrq>) {
        let clock = TestClock::default();
        clock.set(HOST, 0);
        let sink = Arc::new(Offsets::default());
        let irq = Arc::new(CountingIrq::default());
        let r = Rtc::new(Box::new(clock.clone()), offset, sink.clone(), irq.clone(), (256 << 20, 0));
        (r, clock, sink, irq)
    }

    fn get(r: &mut Rtc, reg: u8) -> u8 {
        r.write(INDEX, &[reg]);
        let mut b = [0u8];
        r.read(DATA, &mut b);
        b[0]
    }

    fn put(r: &mut Rtc, reg: u8, v: u8) {
        r.write(INDEX, &[reg]);
        r.write(DATA, &[v]);
    }

    fn time(r: &mut Rtc) -> [u8; 8] {
        [CENTURY, YEAR, MONTH, DAY, HOURS, MINUTES, SECONDS, WEEKDAY].map(|reg| get(r, reg))
    }

    #[test]
    fn reads_host_utc_plus_the_offset_in_bcd_24_hour_form() {
        let (mut r, _, _) = rtc(0);
        assert_eq!(time(&mut r), [0x20, 0x26, 0x12, 0x03, 0x22, 0x30, 0x15, 0x05]);
        let (mut r, _, _) = rtc(3600);
        assert_eq!(get(&mut r, HOURS), 0x23);
        let (mut r, _, _) = rtc(7200);
        assert_eq!(time(&mut r)[2..5], [0x12, 0x04, 0x00], "past midnight, into the next day");
        assert_eq!(get(&mut r, REG_D), VRT);
        assert_eq!(get(&mut r, REG_B), HOURS_24);
    }

    #[test]
    fn binary_and_12_hour_forms_follow_register_b() {
        let (mut r, _, _) = rtc(0);
        put(&mut r, REG_B, DM_BINARY | HOURS_24);
        assert_eq!(time(&mut r), [20, 26, 12, 3, 22, 30, 15, 5]);
        put(&mut r, REG_B, DM_BINARY);
        assert_eq!(get(&mut r, HOURS), 10 | PM);
        put(&mut r, REG_B, 0);
        assert_eq!(get(&mut r, HOURS), 0x10 | PM);
        let (mut r, _, _) = rtc(-22 * 3600 - 30 * 60);
        put(&mut r, REG_B, 0);
        assert_eq!(get(&mut r, HOURS), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn setting_the_time_under_set_moves_the_offset_once() {
        let (mut r, clock, sink) = rtc(0);
        put(&mut r, REG_B, SET | HOURS_24);
        clock.set(HOST + 5, 0);
        assert_eq!(get(&mut r, SECONDS), 0x15, "frozen while SET");
        put(&mut r, HOURS, 0x23);
        put(&mut r, DAY, 0x04);
        assert!(sink.0.lock().unwrap().is_empty(), "nothing applies before SET clears");
        put(&mut r, REG_B, HOURS_24);
        // 2026-12-04 23:30:15 set when the host said 22:30:20.
        let expect = 86_400 + 3600 - 5;
        assert_eq!(*sink.0.lock().unwrap(), [expect]);
        assert_eq!(r.offset(), expect);
        assert_eq!(time(&mut r)[3..7], [0x04, 0x23, 0x30, 0x15]);
        clock.set(HOST + 65, 0);
        assert_eq!(get(&mut r, MINUTES), 0x31, "and runs on from there");
        put(&mut r, REG_B, SET | HOURS_24);
        put(&mut r, REG_B, HOURS_24);
        assert_eq!(sink.0.lock().unwrap().len(), 1, "SET without writes sets nothing");
    }

    #[test]
    fn a_write_with_set_clear_sets_that_field_now() {
        let (mut r, _, sink) = rtc(0);
        put(&mut r, REG_B, DM_BINARY | HOURS_24);
        put(&mut r, YEAR, 27);
        assert_eq!(*sink.0.lock().unwrap(), [365 * 86_400]);
        assert_eq!(get(&mut r, YEAR), 27);
        put(&mut r, WEEKDAY, 1);
        assert_eq!(sink.0.lock().unwrap().len(), 1, "the weekday follows from the date");
    }

    #[test]
    fn invalid_times_change_nothing_and_never_panic() {
        let (mut r, _, sink) = rtc(0);
        for (reg, bad) in [(SECONDS, 0x60), (SECONDS, 0x1a), (MINUTES, 0xff), (HOURS, 0x24), (MONTH, 0x13), (MONTH, 0)]
        {
            put(&mut r, REG_B, SET | HOURS_24);
            put(&mut r, reg, bad);
            put(&mut r, REG_B, HOURS_24);
            put(&mut r, reg, bad);
        }
        put(&mut r, REG_B, SET | HOURS_24);
        put(&mut r, MONTH, 0x02);
        put(&mut r, DAY, 0x30);
        put(&mut r, REG_B, HOURS_24);
        put(&mut r, REG_B, HOURS_24 & !HOURS_24);
        put(&mut r, HOURS, 0x13);
        put(&mut r, HOURS, 0x00);
        assert!(sink.0.lock().unwrap().is_empty(), "{:?}", sink.0.lock().unwrap());
        assert_eq!(r.offset(), 0);
        // Every register, every value, both forms: bounded.
        for b in [0, DM_BINARY, SET, SET | DM_BINARY | HOURS_24] {
            for reg in 0..=255u8 {
                for v in [0u8, 0x59, 0x99, 0xff] {
                    put(&mut r, REG_B, b);
                    put(&mut r, reg, v);
                    get(&mut r, reg);
                }
            }
        }
        let offset = r.offset();
        assert!((MIN_TIME - HOST..=MAX_TIME - HOST).contains(&offset), "{offset}");
    }

    #[test]
    fn offsets_are_bounded_to_what_the_registers_hold() {
        let (mut r, _, _) = rtc(i64::MAX);
        assert_eq!(r.offset(), MAX_TIME - HOST);
        assert_eq!(time(&mut r)[..4], [0x99, 0x99, 0x12, 0x31]);
        let (r, _, _) = rtc(i64::MIN);
        assert_eq!(r.offset(), MIN_TIME - HOST);
    }

    #[test]
    fn uip_shows_just_before_the_update_and_c_flags_it() {
        let (mut r, clock, _) = rtc(0);
        assert_eq!(get(&mut r, REG_A), REG_A_INIT);
        clock.set(HOST, 999_900_000);
        assert_eq!(get(&mut r, REG_A), REG_A_INIT | UIP);
        put(&mut r, REG_A, 0xa6);
        assert_eq!(get(&mut r, REG_A), 0xa6, "UIP cannot be written");
        assert_eq!(get(&mut r, REG_C), 0);
        clock.set(HOST + 1, 0);
        assert_eq!(get(&mut r, REG_C), UF);
        assert_eq!(get(&mut r, REG_C), 0, "the read cleared it");
        put(&mut r, REG_B, HOURS_24 | UIE);
        clock.set(HOST + 2, 0);
        assert_eq!(get(&mut r, REG_C), UF | IRQF);
        put(&mut r, REG_B, HOURS_24 | UIE | SET);
        assert_eq!(get(&mut r, REG_B) & UIE, 0, "SET clears UIE");
    }

    #[test]
    fn update_and_alarm_interrupts_raise_irq_8_once_a_second_while_enabled() {
        let (mut r, clock, sink, irq) = rtc_irq(0);
        assert_eq!(r.next_tick_ms(), None, "nothing enabled, nothing to wake for");
        clock.set(HOST + 1, 0);
        r.tick();
        assert_eq!(irq.count(), 0);
        assert_eq!(get(&mut r, REG_C), UF, "the flag sets without its interrupt");
        put(&mut r, REG_B, HOURS_24 | UIE);
        assert_eq!(sink.1.load(Ordering::SeqCst), 1, "the loop was told to tick");
        clock.set(HOST + 1, 250_000_000);
        assert_eq!(r.next_tick_ms(), Some(751));
        clock.set(HOST + 2, 1000);
        r.tick();
        r.tick();
        assert_eq!(irq.count(), 1, "once per update");
        assert_eq!(get(&mut r, REG_C), IRQF | UF);
        clock.set(HOST + 3, 0);
        r.tick();
        assert_eq!(irq.count(), 2);
        // An alarm at 22:30:20, the update interrupt off.
        put(&mut r, REG_B, HOURS_24 | AIE);
        get(&mut r, REG_C);
        put(&mut r, ALARM_SECONDS, 0x20);
        put(&mut r, ALARM_MINUTES, 0x30);
        put(&mut r, ALARM_HOURS, DONT_CARE);
        clock.set(HOST + 4, 0);
        r.tick();
        assert_eq!((irq.count(), get(&mut r, REG_C)), (2, UF), "22:30:19: no alarm");
        clock.set(HOST + 5, 0);
        r.tick();
        assert_eq!((irq.count(), get(&mut r, REG_C)), (3, IRQF | AF | UF), "22:30:20: the alarm");
        put(&mut r, REG_B, HOURS_24 | SET);
        assert_eq!(r.next_tick_ms(), None, "no updates while SET");
    }

    #[test]
    fn the_nmi_bit_is_not_part_of_the_index_and_ram_keeps_bytes() {
        let (mut r, _, _) = rtc(0);
        r.write(INDEX, &[0x80 | 0x40]);
        r.write(DATA, &[0x5a]);
        assert_eq!(get(&mut r, 0x40), 0x5a);
        let mut b = [0u8];
        r.read(INDEX, &mut b);
        assert_eq!(b, [0xff], "the index port reads all-ones");
        assert_eq!(u16::from_le_bytes([get(&mut r, 0x15), get(&mut r, 0x16)]), 640);
        assert_eq!(u16::from_le_bytes([get(&mut r, 0x17), get(&mut r, 0x18)]), 0xffff, "63 MiB at most shows");
        assert_eq!(u16::from_le_bytes([get(&mut r, 0x34), get(&mut r, 0x35)]), 240 * 16, "in 64 KiB units from 16 MiB");
    }

    #[test]
    fn state_round_trips_and_bad_states_are_refused() {
        let (mut r, _, _) = rtc(42);
        put(&mut r, 0x50, 7);
        let saved = r.state();
        let (mut fresh, _, _) = rtc(0);
        fresh.restore(&saved).unwrap();
        assert_eq!((fresh.offset(), get(&mut fresh, 0x50)), (42, 7));
        let DeviceState::Rtc(mut s) = saved else { panic!() };
        s.ram.truncate(10);
        assert!(matches!(fresh.restore(&DeviceState::Rtc(s)), Err(StateError::Invalid { .. })));
        let other = DeviceState::Pvpanic(Default::default());
        assert!(matches!(fresh.restore(&other), Err(StateError::Kind { want: "rtc", .. })));
    }
}
