//! Phase 4b, highest sustained change rate: after a sustained steady churn, double the rate each
//! step (up to 16,000/s) until a step is not sustained or the harness cannot issue it.

use tokio_postgres::Client;

use crate::churn::{self, ChurnResult};
use crate::phases::{Bench, MainRun};

pub async fn run(
    b: &mut Bench,
    main: &MainRun,
    client: &Client,
    steady: &ChurnResult,
) -> anyhow::Result<()> {
    let (args, rep) = (&b.args, &mut b.rep);
    println!("[4b] highest sustained rate");
    let mut rate = args.churn_rate * 2.0;
    let mut best = if steady.sustained {
        args.churn_rate
    } else {
        0.0
    };
    let mut note = String::new();
    while steady.sustained && rate <= 16_000.0 {
        let s = churn::run(
            &main.sim,
            client,
            &main.ing.proc,
            rate,
            args.churn_seconds(),
        )
        .await?;
        println!(
            "    {rate}/s: achieved {:.0}/s p99 {:.0} ms, pending at end {}, queue {:.0} -> {:.0}: {}",
            s.achieved_rate, s.p99_ms, s.pending_at_end, s.queue_first, s.queue_last,
            if s.sustained { "sustained" } else { "not sustained" }
        );
        rep.add(
            "maxrate",
            &format!("{rate}/s p99 ms (sustained?)"),
            format!("{:.0} ({})", s.p99_ms, s.sustained),
        );
        if s.achieved_rate < 0.95 * rate {
            note = format!(" (harness could only issue {:.0}/s)", s.achieved_rate);
            if s.sustained {
                best = s.achieved_rate;
            }
            break;
        }
        if !s.sustained {
            break;
        }
        best = rate;
        rate *= 2.0;
    }
    rep.add(
        "maxrate",
        "highest sustained changes/s",
        format!("{best:.0}{note}"),
    );
    Ok(())
}
