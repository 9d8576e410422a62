//! Scenario 6: how long a mesh of N nodes, linked as a chain, takes to
//! settle through the implementations' own peer exchange.

use super::*;

pub(super) async fn run_formation(env: &Env, imp: Impl, n: usize) -> RunResult {
    let (nodes, sh, attempts) = form_mesh(env, imp, n, &format!("form{n}")).await?;
    let mut out = RunOut::default();
    out.info
        .push(format!("formation N={n}: {}", shape_note(&sh)));
    if attempts > 1 {
        out.notes.push(format!(
            "{}: the mesh of {n} formed at attempt {attempts}",
            imp.name()
        ));
    }
    if !sh.settled {
        out.notes.push(format!(
            "{}: peer lists still changing 15 s after the last dial",
            imp.name()
        ));
    }
    out.figures.insert("settle_ms", sh.settle_ms);
    out.figures.insert("form_ms", sh.form_ms);
    out.figures.insert("links", sh.links as f64);
    out.figures.insert("hops_from_0", sh.hops_from_0 as f64);
    shutdown(nodes).await;
    Ok(out)
}
