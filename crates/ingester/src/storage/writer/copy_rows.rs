//! Rows in PostgreSQL's binary `COPY` format, gathered into one buffer that goes to the server
//! in large pieces. tokio-postgres' `BinaryCopyInWriter` sends and flushes its buffer as soon
//! as it passes 4 KiB: with ~10 KiB objects that was a socket write, a hand-over to the
//! connection task and a wake-up per row, a fifth of the ingester's CPU in a sync
//! (docs/benchmarks.md, "CPU per object"). The format is the documented one ("COPY", binary
//! format): a signature, flags and header extension, then per row the field count and each
//! field as its length (-1 for NULL) and bytes, and -1 at the end.

use std::error::Error as StdError;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A piece is sent once the buffer holds this much.
pub(super) const SEND_AT: usize = 64 << 10;

pub(super) struct CopyRows {
    buf: BytesMut,
}

/// A value that could not be encoded: which column, and why.
#[derive(Debug)]
pub(super) struct EncodeError {
    pub column: usize,
    pub error: Box<dyn StdError + Sync + Send>,
}

impl CopyRows {
    pub fn new() -> CopyRows {
        let mut buf = BytesMut::with_capacity(SEND_AT + (32 << 10));
        buf.put_slice(SIGNATURE);
        buf.put_i32(0); // flags: no OIDs
        buf.put_i32(0); // header extension: none
        CopyRows { buf }
    }

    /// Appends one row; on an error the buffer is as it was before.
    pub fn row(
        &mut self,
        values: &[&(dyn ToSql + Sync)],
        types: &[Type],
    ) -> Result<(), EncodeError> {
        let start = self.buf.len();
        let Ok(fields) = i16::try_from(values.len()) else {
            return Err(EncodeError {
                column: values.len(),
                error: "too many columns".into(),
            });
        };
        self.buf.put_i16(fields);
        for (column, (value, ty)) in values.iter().zip(types).enumerate() {
            if let Err(error) = self.field(*value, ty) {
                self.buf.truncate(start);
                return Err(EncodeError { column, error });
            }
        }
        Ok(())
    }

    fn field(
        &mut self,
        value: &(dyn ToSql + Sync),
        ty: &Type,
    ) -> Result<(), Box<dyn StdError + Sync + Send>> {
        let at = self.buf.len();
        self.buf.put_i32(0);
        let len = match value.to_sql_checked(ty, &mut self.buf)? {
            IsNull::Yes => -1,
            IsNull::No => i32::try_from(self.buf.len() - at - 4)?,
        };
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// A piece to send, once the buffer holds [`SEND_AT`] bytes.
    pub fn take_full(&mut self) -> Option<Bytes> {
        (self.buf.len() >= SEND_AT).then(|| self.buf.split().freeze())
    }

    /// The rest, with the end-of-data marker.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_encoded_in_the_binary_copy_format() {
        let mut rows = CopyRows::new();
        let name = "a";
        let none: Option<&str> = None;
        let n: i64 = 7;
        rows.row(&[&name, &none, &n], &[Type::TEXT, Type::TEXT, Type::INT8])
            .expect("row");
        assert!(rows.take_full().is_none(), "a small buffer is kept");
        let bytes = rows.finish();
        let mut want = Vec::new();
        want.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&3i16.to_be_bytes());
        want.extend_from_slice(&1i32.to_be_bytes());
        want.extend_from_slice(b"a");
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&7i64.to_be_bytes());
        want.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(&bytes[..], &want[..]);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_column_and_leaves_the_buffer_whole() {
        let mut rows = CopyRows::new();
        let (a, b): (&str, &str) = ("x", "y");
        rows.row(&[&a], &[Type::TEXT]).expect("row");
        let e = rows
            .row(&[&a, &b], &[Type::TEXT, Type::INT8])
            .expect_err("text is not int8");
        assert_eq!(e.column, 1);
        let bytes = rows.finish();
        // header, the one good row (2 + 4 + 1 bytes), the end marker
        assert_eq!(bytes.len(), 19 + 7 + 2);
    }

    #[test]
    fn a_full_buffer_is_handed_out_and_started_again() {
        let mut rows = CopyRows::new();
        let big = "x".repeat(SEND_AT);
        rows.row(&[&big.as_str()], &[Type::TEXT]).expect("row");
        let piece = rows.take_full().expect("full");
        assert_eq!(piece.len(), 19 + 2 + 4 + SEND_AT);
        assert!(rows.take_full().is_none());
        assert_eq!(&rows.finish()[..], &(-1i16).to_be_bytes());
    }
}
