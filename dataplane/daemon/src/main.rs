fn main() {
    eprintln!("gyred: not built yet");
    std::process::exit(1);
}
