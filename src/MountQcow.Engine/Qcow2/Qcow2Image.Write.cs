namespace MountQcow.Qcow2;

public sealed partial class Qcow2Image
{
    public void WriteAt(ReadOnlySpan<byte> buffer, long offset) =>
        throw new NotSupportedException("writing qcow2 images is not implemented yet");

    public void Flush() { }
}
