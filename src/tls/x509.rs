//! Just enough DER to read a certificate's validity, and the name check.

use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;

/// When a DER certificate starts and stops being valid (`notBefore`,
/// `notAfter`), in UNIX seconds; `None` if it is not a certificate.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
    // notBefore, notAfter }, … }, … }
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after; // the explicit version
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // serial number, signature algorithm, issuer
    }
    let (_, validity, _) = der(rest)?;
    let (tag, not_before, rest) = der(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = der(rest)?;
    Some((not_before, time(tag, not_after)?))
}

/// Says which of `names` the certificate is not valid for, if any.
pub fn check_names(cert: &CertificateDer<'_>, names: &[String]) -> Result<(), String> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    for name in names {
        let server = ServerName::try_from(name.as_str())
            .map_err(|_| format!("{name:?} is not a host name"))?;
        if rustls::client::verify_server_name(&parsed, &server).is_err() {
            return Err(format!("the certificate is not valid for {name}"));
        }
    }
    Ok(())
}

/// A UTCTime (tag 0x17) or GeneralizedTime (0x18), in UNIX seconds.
fn time(tag: u8, value: &[u8]) -> Option<i64> {
    let time = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime: YYMMDDHHMMSS, years 1950 to 2049.
            let yy: i64 = time.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, time.get(2..)?)
        }
        0x18 => (time.get(..4)?.parse().ok()?, time.get(4..)?), // GeneralizedTime
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    Some(days_from_civil(year, month, day) * 86_400 + seconds)
}

/// One DER element at the start of `input`: its tag, its contents and what
/// follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 {
            return None;
        }
        let (len, after) = (rest.get(..bytes)?, rest.get(bytes..)?);
        rest = after;
        len.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    Some((tag, rest.get(..length)?, rest.get(length..)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_since_1970() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 30), 20_787);
        assert_eq!(days_from_civil(2050, 1, 1), 29_220);
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(b"\x30\x82\xff\xff"), None);
        assert_eq!(validity(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
