//! Drives as NMEA 0183 logs: what a GNSS receiver in a moving car would print, one epoch a
//! second, for gpsd to read (through [`crate::gpsd::FakeGps`]) and for tests to compare a
//! node's reported location with.
//!
//! A [`Drive`] is a start point and legs (straight, parked, fix lost). Each epoch is a
//! `$GPRMC` and a `$GPGGA` sentence: RMC gives the date, speed and course, GGA the altitude,
//! and with an altitude gpsd reports a 3D fix (mode 3) without a `$GPGSA`. A lost fix is RMC
//! status `V` and GGA quality 0 with the position fields empty, as a receiver prints it.
//! The date is fixed (2024-05-01) and the first epoch is at 12:00:00 UTC, so a drive lasts
//! at most 12 hours and never crosses midnight.
//!
//! Pure: no I/O and no clock. Positions move on a sphere (great circles from each leg's
//! start), close enough to the ellipsoid for checks within metres.

/// The mean radius of the Earth (IUGG), in metres.
const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// The date of every epoch, as RMC writes it (ddmmyy) and as gpsd reports it.
const DATE_DDMMYY: &str = "010524";
const DATE_ISO: &str = "2024-05-01";
/// The time of day of the first epoch, in seconds.
const START_SECS: u32 = 12 * 3600;
/// A drive ends before midnight: the date is fixed.
const MAX_EPOCHS: usize = (24 * 3600 - START_SECS) as usize;
/// The receiver's antenna height above mean sea level and the geoid separation, in metres.
const ALTITUDE_M: f64 = 520.0;
const GEOID_SEPARATION_M: f64 = 47.0;
const KMH_PER_KNOT: f64 = 1.852;

/// Where the receiver says the car is at one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// Degrees north (negative: south).
    pub lat: f64,
    /// Degrees east (negative: west).
    pub lon: f64,
    /// Whether the receiver has a fix. Without one the log has no position: `lat` and `lon`
    /// are where the car waits, which a node cannot know.
    pub has_fix: bool,
}

impl Position {
    /// The great-circle distance to (`lat`, `lon`) in metres.
    pub fn distance_m(&self, lat: f64, lon: f64) -> f64 {
        distance_m(self.lat, self.lon, lat, lon)
    }
}

/// One second of the drive.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    position: Position,
    speed_kmh: f64,
    course_deg: f64,
}

/// A drive, epoch by epoch: built from a start with legs, then written as an NMEA log.
///
/// ```text
/// let drive = Drive::from(48.1351, 11.5820)
///     .straight(90.0, 50.0, 60)
///     .fix_lost(10)
///     .straight(0.0, 50.0, 60)
///     .parked(30);
/// // 1 + 60 + 10 + 60 + 30 epochs: the start, then one a second.
/// ```
#[derive(Debug, Clone)]
pub struct Drive {
    epochs: Vec<Epoch>,
    /// Where the car is after the last epoch (a jittered position is the receiver's error,
    /// not the car's).
    lat: f64,
    lon: f64,
    course_deg: f64,
}

impl Drive {
    /// A drive whose first epoch has the car at (`lat`, `lon`), with a fix, standing.
    pub fn from(lat: f64, lon: f64) -> Self {
        let mut drive = Self {
            epochs: Vec::new(),
            lat,
            lon,
            course_deg: 0.0,
        };
        drive.push(lat, lon, true, 0.0);
        drive
    }

    /// `secs` epochs along the great circle that leaves the current point on `bearing_deg`
    /// (clockwise from north), at `speed_kmh`.
    pub fn straight(mut self, bearing_deg: f64, speed_kmh: f64, secs: u32) -> Self {
        let (lat, lon) = (self.lat, self.lon);
        self.course_deg = bearing_deg.rem_euclid(360.0);
        for s in 1..=secs {
            let metres = speed_kmh / 3.6 * f64::from(s);
            let (lat, lon) = destination(lat, lon, bearing_deg, metres);
            self.push(lat, lon, true, speed_kmh);
        }
        self
    }

    /// `secs` epochs standing still, with a fix.
    pub fn parked(self, secs: u32) -> Self {
        self.parked_jittering(secs, 0.0)
    }

    /// `secs` epochs standing still, the receiver's positions scattered up to `metres` from
    /// the car as a real one's are. The scatter is the same on every run.
    pub fn parked_jittering(mut self, secs: u32, metres: f64) -> Self {
        let (lat, lon) = (self.lat, self.lon);
        for _ in 0..secs {
            // Seeded by the epoch: a drive is the same log every time it is built.
            let mut rng = fastrand::Rng::with_seed(self.epochs.len() as u64);
            let (lat, lon) = destination(lat, lon, rng.f64() * 360.0, rng.f64() * metres);
            self.push(lat, lon, true, 0.0);
        }
        (self.lat, self.lon) = (lat, lon);
        self
    }

    /// `secs` epochs without a fix (a car park under a building): the car waits where it is.
    pub fn fix_lost(mut self, secs: u32) -> Self {
        let (lat, lon) = (self.lat, self.lon);
        for _ in 0..secs {
            self.push(lat, lon, false, 0.0);
        }
        self
    }

    /// Where the receiver says the car is, epoch by epoch: index `i` is `i` seconds after
    /// the first epoch.
    pub fn positions(&self) -> Vec<Position> {
        self.epochs.iter().map(|e| e.position).collect()
    }

    /// How many epochs (seconds) the drive has.
    pub fn epochs(&self) -> usize {
        self.epochs.len()
    }

    /// The epoch whose time gpsd reports as `utc` (its TPV `time`, such as
    /// `2024-05-01T12:00:05.000Z`), if the drive has it.
    pub fn epoch_at(&self, utc: &str) -> Option<usize> {
        let time = utc.strip_prefix(DATE_ISO)?.strip_prefix('T')?;
        let mut hms = time.get(..8)?.split(':').map(|f| f.parse::<u32>().ok());
        let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
        let epoch = (h * 3600 + m * 60 + s).checked_sub(START_SECS)? as usize;
        (epoch < self.epochs.len()).then_some(epoch)
    }

    /// The NMEA log: per epoch an RMC then a GGA sentence, each ending in CRLF.
    pub fn to_log(&self) -> String {
        let mut log = String::new();
        for (i, epoch) in self.epochs.iter().enumerate() {
            // MAX_EPOCHS keeps the index within a day's seconds.
            let secs = START_SECS + u32::try_from(i).expect("at most a day of epochs");
            let time = format!("{:02}{:02}{:02}.00", secs / 3600, secs / 60 % 60, secs % 60);
            let p = epoch.position;
            if p.has_fix {
                let (lat, lon) = (lat_field(p.lat), lon_field(p.lon));
                let knots = epoch.speed_kmh / KMH_PER_KNOT;
                let course = epoch.course_deg;
                log += &sentence(&format!(
                    "GPRMC,{time},A,{lat},{lon},{knots:.2},{course:.1},{DATE_DDMMYY},,,A"
                ));
                log += &sentence(&format!(
                    "GPGGA,{time},{lat},{lon},1,08,0.9,{ALTITUDE_M:.1},M,{GEOID_SEPARATION_M:.1},M,,"
                ));
            } else {
                log += &sentence(&format!("GPRMC,{time},V,,,,,,,{DATE_DDMMYY},,,N"));
                log += &sentence(&format!("GPGGA,{time},,,,,0,00,99.99,,,,,,"));
            }
        }
        log
    }

    fn push(&mut self, lat: f64, lon: f64, has_fix: bool, speed_kmh: f64) {
        assert!(
            self.epochs.len() < MAX_EPOCHS,
            "a drive lasts at most {MAX_EPOCHS} s: its date is fixed and it starts at noon"
        );
        (self.lat, self.lon) = (lat, lon);
        self.epochs.push(Epoch {
            position: Position { lat, lon, has_fix },
            speed_kmh,
            course_deg: self.course_deg,
        });
    }
}

/// How many sentences each epoch of [`Drive::to_log`] has.
pub const SENTENCES_PER_EPOCH: usize = 2;

/// `$body*HH` and CRLF: a sentence with its checksum.
pub fn sentence(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body))
}

/// The NMEA checksum of the text between `$` and `*`: the XOR of its bytes.
pub fn checksum(body: &str) -> u8 {
    body.bytes().fold(0, |sum, b| sum ^ b)
}

/// A latitude as NMEA writes it: `ddmm.mmmm,N` or `S`.
pub fn lat_field(lat: f64) -> String {
    let (deg, min) = degrees_minutes(lat);
    format!("{deg:02}{min},{}", if lat < 0.0 { 'S' } else { 'N' })
}

/// A longitude as NMEA writes it: `dddmm.mmmm,E` or `W`.
pub fn lon_field(lon: f64) -> String {
    let (deg, min) = degrees_minutes(lon);
    format!("{deg:03}{min},{}", if lon < 0.0 { 'W' } else { 'E' })
}

/// Whole degrees and the minutes as `mm.mmmm` (a ten-thousandth of a minute is 0.19 m),
/// rounded as one number so that 59.99999' carries into the degrees instead of printing
/// as 60'.
fn degrees_minutes(value: f64) -> (u64, String) {
    const STEPS_PER_DEGREE: u64 = 60 * 10_000;
    // At most 180 degrees: far inside u64 and f64's exact integers.
    let steps = (value.abs() * STEPS_PER_DEGREE as f64).round() as u64;
    let (deg, rest) = (steps / STEPS_PER_DEGREE, steps % STEPS_PER_DEGREE);
    (deg, format!("{:02}.{:04}", rest / 10_000, rest % 10_000))
}

/// The point `metres` from (`lat`, `lon`) along the great circle leaving it on
/// `bearing_deg`, longitude in [-180, 180).
pub fn destination(lat: f64, lon: f64, bearing_deg: f64, metres: f64) -> (f64, f64) {
    let (phi1, lambda1, theta) = (lat.to_radians(), lon.to_radians(), bearing_deg.to_radians());
    let delta = metres / EARTH_RADIUS_M;
    let phi2 = (phi1.sin() * delta.cos() + phi1.cos() * delta.sin() * theta.cos()).asin();
    let lambda2 = lambda1
        + (theta.sin() * delta.sin() * phi1.cos()).atan2(delta.cos() - phi1.sin() * phi2.sin());
    let lon2 = (lambda2.to_degrees() + 180.0).rem_euclid(360.0) - 180.0;
    (phi2.to_degrees(), lon2)
}

/// The great-circle (haversine) distance between two points, in metres.
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let (dphi, dlambda) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
    let a = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a sentence into its body and the checksum it carries.
    fn parts(line: &str) -> (&str, u8) {
        let line = line.trim_end_matches("\r\n");
        let (body, sum) = line[1..].split_once('*').expect("a checksum");
        (body, u8::from_str_radix(sum, 16).expect("hex"))
    }

    #[test]
    fn checksums_match_the_classic_examples() {
        // The examples of the NMEA references (gpsd's "NMEA Revealed" among them).
        for known in [
            "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
            "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
        ] {
            let (body, sum) = parts(known);
            assert_eq!(checksum(body), sum, "{known}");
            assert_eq!(sentence(body), format!("{known}\r\n"));
        }
    }

    #[test]
    fn every_sentence_of_a_log_has_its_checksum_and_crlf() {
        let log = Drive::from(-33.8568, 151.2153)
            .straight(200.0, 30.0, 5)
            .fix_lost(3)
            .parked_jittering(4, 3.0)
            .to_log();
        assert!(log.ends_with("\r\n"));
        let lines: Vec<&str> = log.split_inclusive("\r\n").collect();
        assert_eq!(lines.len(), (1 + 5 + 3 + 4) * SENTENCES_PER_EPOCH);
        for line in lines {
            assert!(line.starts_with('$') && line.ends_with("\r\n"), "{line:?}");
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            let (body, sum) = parts(line);
            assert_eq!(checksum(body), sum, "{line:?}");
        }
    }

    #[test]
    fn degrees_and_minutes_in_every_hemisphere() {
        assert_eq!(lat_field(48.1173), "4807.0380,N");
        assert_eq!(lon_field(11.516_666_7), "01131.0000,E");
        assert_eq!(lat_field(-33.8568), "3351.4080,S");
        assert_eq!(lon_field(-0.1276), "00007.6560,W");
        assert_eq!(lon_field(-122.4194), "12225.1640,W");
        assert_eq!(lat_field(0.0), "0000.0000,N");
    }

    #[test]
    fn minutes_that_round_to_60_carry_into_the_degrees() {
        // 59.999994' rounds to 60.0000': it must print as the next degree.
        assert_eq!(lat_field(48.999_999_9), "4900.0000,N");
        assert_eq!(lon_field(-9.999_999_9), "01000.0000,W");
        assert_eq!(lat_field(48.999_99), "4859.9994,N");
    }

    #[test]
    fn a_5_km_straight_leg_ends_5_km_from_its_start() {
        for (lat, lon, bearing) in [(48.1351, 11.582, 63.0), (-41.29, 174.78, 250.0)] {
            // 5 km at 60 km/h: 300 s.
            let drive = Drive::from(lat, lon).straight(bearing, 60.0, 300);
            let last = *drive.positions().last().expect("epochs");
            let d = last.distance_m(lat, lon);
            assert!((d - 5000.0).abs() < 1.0, "{d} m");
            // The log says the same, to its 0.2 m resolution.
            let rmc = drive
                .to_log()
                .lines()
                .rev()
                .nth(1)
                .expect("the last RMC")
                .to_owned();
            assert!(rmc.contains(&lat_field(last.lat)), "{rmc}");
            assert!(rmc.contains(&lon_field(last.lon)), "{rmc}");
            assert!(rmc.contains(",32.40,"), "60 km/h in knots: {rmc}");
        }
    }

    #[test]
    fn a_leg_across_the_antimeridian_keeps_longitudes_in_range() {
        let (lat, lon) = destination(0.0, 179.99, 90.0, 5000.0);
        assert!(
            lat.abs() < 1e-9 && (-180.0..-179.9).contains(&lon),
            "{lat} {lon}"
        );
    }

    #[test]
    fn time_advances_a_second_an_epoch_and_fix_loss_empties_the_position() {
        let drive = Drive::from(10.0, 20.0).straight(0.0, 36.0, 61).fix_lost(2);
        let log = drive.to_log();
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines[0].starts_with("$GPRMC,120000.00,A,"), "{}", lines[0]);
        assert!(lines[1].starts_with("$GPGGA,120000.00,"), "{}", lines[1]);
        assert!(
            lines[122].starts_with("$GPRMC,120101.00,A,"),
            "{}",
            lines[122]
        );
        assert!(lines[124].starts_with("$GPRMC,120102.00,V,,,,,,,010524,"));
        assert!(lines[125].starts_with("$GPGGA,120102.00,,,,,0,"));
        let positions = drive.positions();
        assert!(positions[61].has_fix && !positions[62].has_fix);
        // 36 km/h is 10 m/s.
        assert!((positions[61].distance_m(10.0, 20.0) - 610.0).abs() < 0.01);
        // The car waits where the fix was lost.
        assert_eq!(
            (positions[62].lat, positions[62].lon),
            (positions[61].lat, positions[61].lon)
        );
        assert_eq!(drive.epoch_at("2024-05-01T12:01:01.000Z"), Some(61));
        assert_eq!(drive.epoch_at("2024-05-01T12:01:03.000Z"), Some(63));
        assert_eq!(drive.epoch_at("2024-05-01T12:01:04.000Z"), None);
        assert_eq!(drive.epoch_at("2024-05-02T12:00:00.000Z"), None);
    }

    #[test]
    fn parked_jitter_stays_within_its_metres_and_repeats() {
        let build = || {
            Drive::from(52.52, 13.405)
                .parked_jittering(50, 4.0)
                .straight(0.0, 36.0, 1)
        };
        let positions = build().positions();
        assert_eq!(positions, build().positions());
        let moved = positions[1..51]
            .iter()
            .filter(|p| p.distance_m(52.52, 13.405) > 0.5);
        assert!(moved.count() > 40, "the positions scatter");
        assert!(
            positions[1..51]
                .iter()
                .all(|p| p.distance_m(52.52, 13.405) <= 4.0)
        );
        // The next leg leaves from where the car stood, not from a scattered position.
        assert!((positions[51].distance_m(52.52, 13.405) - 10.0).abs() < 0.01);
    }
}
